"""Settings of the world models, declared once (torch-free, so configuration can import them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from odmar_mpi.settings import SettingError, check_settings, setting


@dataclass
class ModelConfig:
    """The `[model]` settings of ODMAR: the sparse-GP world model, when it is refitted, and the optimistic
    imagined rollouts drawn from it (defaults: the original research code's)."""

    num_inducing: int = setting(1000, "Inducing points M, shared by seed. Memory per rank grows as M^2 "
                                      "(statistics, posterior and consensus buffers: about 40 M^2 bytes).",
                                low=1)
    lengthscale: float = setting(2.0, "RBF lengthscale on raw inputs (position, action).", low=0, low_open=True)
    linear_variance: float = setting(1.0, "Scale of the linear kernel x.y (0 drops the term).", low=0)
    constant: float = setting(0.1, "Constant kernel offset (0 drops the term).", low=0)
    noise_var: float = setting(0.01, "Observation noise variance s^2.", low=0, low_open=True)
    update_every: int = setting(250, "Steps between consensus + posterior + imagination.", unit="steps", low=1)
    holdout_every: int = setting(10, "Every n-th real transition is held out of the model to measure its "
                                     "prediction error; 0 = none.", low=0)
    beta: float = setting(0.01, "Optimism: reward bonus beta * (sum over outputs of the predictive std).", low=0)
    rollout_batch: int = setting(256, "Imagined rollouts started per model update.", low=1)
    rollout_length: int = setting(2, "Imagined steps per rollout.", unit="steps", low=1)
    imagined_keep: int = setting(5, "Model updates whose imagined data stay in the imagined buffer.", low=1)
    uniform_starts: float = setting(0.0, "Share of imagined rollouts that start from a state drawn uniformly over the "
                                         "world instead of from the real buffer (so the critic learns the value of "
                                         "places the agent's own data never reached; the original: 0).",
                                    low=0, high=1)

    def __post_init__(self) -> None:
        check_settings(self, "model.")


@dataclass
class WorldModelConfig:
    """The `[world_model]` settings of MAMBA's RSSM (one per rank); defaults are MAMBA's SMAC configuration
    (github jbr-ai-labs/mamba, configs/dreamer) unless stated."""

    deterministic: int = setting(256, "GRU state h (MAMBA DETERMINISTIC).", unit="units", low=1)
    n_categoricals: int = setting(32, "C, categorical variables in the stochastic state z (MAMBA N_CATEGORICALS).",
                                  low=1)
    n_classes: int = setting(32, "K, classes of each categorical (MAMBA N_CLASSES).", low=2, high=32767)
    hidden: int = setting(256, "Width of the encoder, decoder and posterior layers (MAMBA HIDDEN).", unit="units",
                          low=1)
    embed: int = setting(256, "Observation embedding (MAMBA EMBED).", unit="units", low=1)
    model_hidden: int = setting(256, "Width of the tokens, attention, its feed-forward layer, the GRU input and the "
                                     "prior layer (MAMBA MODEL_HIDDEN); a multiple of comm_heads.", unit="units", low=1)
    comm_layers: int = setting(1, "Attention layers of the communication block (MAMBA: 3 over all agents; 1 over "
                                  "self + neighbours is exact with one neighbour message per step).", low=1)
    comm_heads: int = setting(8, "Attention heads of the communication block (MAMBA: 8).", low=1)
    comm_dropout: float = setting(0.1, "Dropout of the communication block while the model trains (MAMBA: 0.1).",
                                  low=0, high=1, high_open=True)
    position_encoding: bool = setting(True, "Add a sinusoid of the global agent index to each token (MAMBA does, by "
                                            "position on the agent axis).")
    head_hidden: int = setting(256, "Width of the reward, discount, available-actions and action-prediction heads "
                                    "(MAMBA REWARD_HIDDEN = PCONT_HIDDEN).", unit="units", low=1)
    head_layers: int = setting(2, "Hidden layers of the reward, discount and available-actions heads (MAMBA "
                                  "REWARD_LAYERS = PCONT_LAYERS).", low=1)
    kl_balance: float = setting(0.2, "Weight of KL(posterior || sg(prior)); the prior term gets 1 - kl_balance "
                                     "(MAMBA: 0.2).", low=0, high=1)
    horizon: int = setting(15, "Imagined transitions per start state (MAMBA HORIZON = 15 counts states, so it trains "
                               "on 14).", unit="steps", low=1)
    lr: float = setting(2e-4, "Adam learning rate of the world model (MAMBA MODEL_LR).", low=0, low_open=True)
    grad_clip: float = setting(100.0, "Global gradient-norm clip before each Adam step (MAMBA GRAD_CLIP).", low=0,
                               low_open=True)

    def __post_init__(self) -> None:
        check_settings(self, "world_model.")

    def check_rules(self, prefix: str) -> None:
        if self.model_hidden % self.comm_heads:
            raise SettingError(f"{prefix}model_hidden = {self.model_hidden} is not a multiple of {prefix}comm_heads = "
                               f"{self.comm_heads}: attention splits the width evenly between heads.")

    @property
    def stochastic(self) -> int:
        """Size of the flattened one-hot z, C * K."""
        return self.n_categoricals * self.n_classes

    @property
    def features(self) -> int:
        """Size of the features [z, h] with z one-hot (what the world model's heads read in training)."""
        return self.stochastic + self.deterministic

    @property
    def compact_features(self) -> int:
        """Size of the features [z, h] with z as its C class indices (what the actor and critic read)."""
        return self.n_categoricals + self.deterministic
