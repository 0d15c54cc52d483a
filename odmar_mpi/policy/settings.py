"""Settings of the policies, declared once (torch-free, so configuration can import them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from odmar_mpi.settings import SettingError, check_settings, setting


@dataclass
class SACConfig:
    """The `[sac]` settings: networks, optimiser and replay of one agent's SAC (defaults: the original research code's)."""

    hidden: list[int] = setting([256, 256], "Hidden layer widths of actor and critics (ReLU).", unit="units", low=1)
    lr: float = setting(3e-4, "Adam learning rate of actor, critics and temperature.", low=0, low_open=True,
                        aliases=("learning_rate", "lr_actor", "lr_critic", "alpha_lr"))
    gamma: float = setting(0.99, "Discount.", low=0, high=1, high_open=True)
    tau: float = setting(0.005, "Polyak rate of the target critics: target <- target + tau (online - target).",
                         low=0, high=1, low_open=True)
    init_alpha: float = setting(1.0, "Initial entropy temperature.", low=0, low_open=True)
    target_entropy: float = setting(-2.0, "Entropy the temperature steers towards (the original: -act_dim).",
                                    unit="nats")
    batch_size: int = setting(256, "Transitions per SAC update.", low=1, aliases=("batch",))
    buffer_size: int = setting(1_000_000, "Real replay buffer capacity (preallocated, 32 B per transition).",
                               unit="transitions", low=1, aliases=("replay_size", "capacity"))
    updates_per_step: int = setting(10, "SAC updates per environment step after warm-up.", low=1)
    real_ratio: float = setting(0.0, "Share of real transitions per batch (at least one is always real).",
                                low=0, high=1)
    obs_scale: float = setting(0.0, "Observations are divided by this before entering the networks; 0 = the "
                                    "world's extent (positions in [-1, 1]); 1 = raw, as the original.", low=0)
    init: str = setting("fan_in", "Initialisation of actor and critics: 'fan_in' (PyTorch's default, weights and "
                                  "biases uniform in +-1/sqrt(fan_in)) or 'xavier' (the original's: Xavier-uniform "
                                  "weights, zero biases).", choices=("fan_in", "xavier"))
    hold_floor: bool = setting(False, "Floor each TD target at r + gamma * h(s') / (1 - gamma), h(s') the reward of "
                                      "holding still at s' (the world's hold action and its known reward): standing "
                                      "on a site for ever is always possible, so its value is at least that. "
                                      "Reward-collection world only.")

    def __post_init__(self) -> None:
        check_settings(self, "sac.")


@dataclass
class PPOConfig:
    """The `[ppo]` settings: one agent's actor-critic and its PPO update, shared by MAMBA (on imagined data) and
    IPPO (on real data); defaults are MAMBA's SMAC configuration unless stated."""

    actor_hidden: int = setting(256, "Actor layer width (MAMBA ACTION_HIDDEN).", unit="units", low=1)
    actor_layers: int = setting(2, "Actor hidden layers (MAMBA ACTION_LAYERS).", low=1)
    critic_hidden: int = setting(256, "Critic embedding, attention and head width (MAMBA HIDDEN); a multiple of "
                                      "critic_heads.", unit="units", low=1)
    critic_heads: int = setting(8, "Attention heads of the critic (MAMBA: 8).", low=1)
    actor_output_gain: float = setting(1.0, "Factor on the actor's orthogonally initialised output weights (MAMBA: "
                                            "1; the output bias starts at zero); 0.01 starts near the uniform "
                                            "policy (Andrychowicz et al. 2021), where 1 gives each state a strong "
                                            "arbitrary preference.",
                                       low=0, low_open=True)
    actor_lr: float = setting(5e-4, "Actor Adam learning rate (MAMBA ACTOR_LR).", low=0, low_open=True,
                              aliases=("lr", "learning_rate"))
    actor_weight_decay: float = setting(1e-5, "Actor Adam weight decay (MAMBA: 1e-5).", low=0)
    critic_lr: float = setting(5e-4, "Critic Adam learning rate (MAMBA VALUE_LR).", low=0, low_open=True)
    gamma: float = setting(0.99, "Discount per step (MAMBA GAMMA).", low=0, high=1, low_open=True)
    lam: float = setting(0.95, "Lambda of the lambda-returns (MAMBA DISCOUNT_LAMBDA).", low=0, high=1,
                         aliases=("lambda", "gae_lambda"))
    clip: float = setting(0.2, "PPO ratio clip epsilon (MAMBA: 0.2).", low=0, low_open=True)
    epochs: int = setting(5, "Passes over the batch per update (MAMBA PPO_EPOCHS).", low=1)
    minibatch_size: int = setting(2000, "Samples per actor/critic step (MAMBA: 2000 rows of all agents; ours are "
                                        "one agent's).", low=1)
    entropy_coef: float = setting(1e-3, "Initial weight of the entropy bonus (MAMBA ENTROPY).", low=0)
    entropy_decay: float = setting(0.99998, "Factor on the entropy weight after every actor step (MAMBA "
                                            "ENTROPY_ANNEALING).", low=0, high=1, low_open=True)
    normalise_advantages: bool = setting(True, "Standardise advantages over each batch (MAMBA does on SMAC).")
    advantage_eps: float = setting(1e-4, "Added to the advantages' standard deviation before dividing (MAMBA: "
                                         "1e-4).", low=0, low_open=True)
    grad_clip: float = setting(100.0, "Gradient-norm clip of actor and critic steps, before Adam (MAMBA "
                                      "GRAD_CLIP_POLICY).", low=0, low_open=True)
    evaluation: str = setting("argmax", "How the actor acts in evaluations: 'argmax' (the most probable action) or "
                                        "'sample' (drawn from the policy, as MAMBA's controller always acts).",
                              choices=("argmax", "sample"))
    rollout_steps: int = setting(500, "IPPO only: real steps collected per PPO update (on-policy).", unit="steps",
                                 low=1)

    def __post_init__(self) -> None:
        check_settings(self, "ppo.")

    def check_rules(self, prefix: str) -> None:
        if self.critic_hidden % self.critic_heads:
            raise SettingError(f"{prefix}critic_hidden = {self.critic_hidden} is not a multiple of {prefix}critic_heads = "
                               f"{self.critic_heads}: attention splits the width evenly between heads.")
