"""IPPO: MAMBA's actor and critic trained with PPO on real data only (the baseline that isolates the world model).

The actor and critic read the agent's own observation (the critic attends over itself only: without a
world model there are no neighbour features to attend to). Every `ppo.rollout_steps` steps the
transitions gathered since the last update form one on-policy batch; the weights are then averaged with
the neighbours exactly as MAMBA's are (`comm.parameter_rounds`), so the two differ only in the model.
Episode ends stop the lambda-returns. An end by the time limit is not an end of the task: its reward is
bootstrapped with the critic's value of the state it cut off, r + gamma V(s'), where a termination has
nothing after it (a 25-step simple_spread episode always ends by truncation).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.learners.base import TRAINING_MODES, Learner, LearnerContext, Transition
from odmar_mpi.policy.ppo import PPO
from odmar_mpi.streams import shared_seed

PPO_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "entropy_coef", "returns_mean")


@torch.no_grad()
def truncation_bootstrapped_rewards(rollout: list[Transition], critic: torch.nn.Module, gamma: float) -> torch.Tensor:
    """Rewards (H,) of consecutive transitions, where each one cut off by the time limit (and not terminated)
    gets gamma times the critic's value of the state it reached added: the lambda-returns stop there, but the
    task would have gone on."""
    rewards = torch.tensor([t.reward for t in rollout], dtype=torch.float32)
    cut = [i for i, t in enumerate(rollout) if t.truncated and not t.terminated]
    if cut:
        reached = torch.as_tensor(np.stack([rollout[i].next_obs for i in cut]), dtype=torch.float32)
        values = critic(reached[None, :, None, :], torch.ones(len(cut), 1, dtype=torch.bool))[0]
        rewards[cut] += gamma * values
    return rewards


class IPPOLearner(Learner):
    """PPO on the agent's own real transitions, weights averaged with the neighbours after each update."""

    tables = {"ppo": ("step", *PPO_STATS, "samples", "parameter_bytes")}

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        cfg, world = ctx.cfg, ctx.world
        self.model_every = cfg.ppo.rollout_steps
        self.ppo = PPO(world.obs_dim, world.n_actions, cfg.ppo, shared_seed(cfg.run.seed, "init"))
        self.generator = torch.Generator().manual_seed(ctx.seed("policy"))
        self.eval_generator = torch.Generator().manual_seed(ctx.seed("evaluate"))  # sampled evaluations only
        self.warmup_rng = np.random.default_rng(ctx.seed("warmup"))
        self.random_rng = np.random.default_rng(ctx.seed("random_eval"))  # used once, before training
        self.rollout: list[Transition] = []
        # Per training step until its transition arrives: whether the current policy chose the action (PPO is
        # on-policy: warm-up's random actions are not trained on).
        self.on_policy: deque[bool] = deque()

    @torch.no_grad()
    def act(self, obs: np.ndarray, mode: str) -> np.ndarray:
        if mode in TRAINING_MODES:
            self.on_policy.append(mode == "explore")
        if mode in ("warmup", "random"):
            return np.asarray((self.warmup_rng if mode == "warmup" else self.random_rng).integers(self.ctx.world.n_actions))
        x = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
        if mode == "explore":
            return np.asarray(self.ppo.actor.act(x, self.generator, greedy=False))
        return np.asarray(self.ppo.actor.act(x, self.eval_generator, greedy=self.ctx.cfg.ppo.evaluation == "argmax"))

    def observe(self, transition: Transition) -> None:
        if self.on_policy.popleft():
            self.rollout.append(transition)

    def update(self, step: int) -> None:
        """IPPO updates in `model_step`, once a rollout is gathered."""

    def model_step(self, step: int, gossip: VectorGossip) -> None:
        """One PPO update on the rollout gathered since the last one, then the weights' averaging step."""
        if not self.rollout:
            return
        rollout, self.rollout = self.rollout, []
        obs = [t.obs for t in rollout] + [rollout[-1].next_obs]
        features = torch.as_tensor(np.stack(obs), dtype=torch.float32)[:, None, None, :]  # (H + 1, B=1, M=1, F)
        ends = torch.tensor([t.terminated or t.truncated for t in rollout], dtype=torch.float32)
        with self.ctx.clock("updates"):
            rewards = truncation_bootstrapped_rewards(rollout, self.ppo.critic, self.ctx.cfg.ppo.gamma)
            batch = self.ppo.make_batch(features, torch.ones(1, 1, dtype=torch.bool),
                                        torch.tensor([[int(t.action)] for t in rollout]), rewards.unsqueeze(-1),
                                        (1.0 - ends).unsqueeze(-1))
            stats = self.ppo.update(batch, self.generator)
        rounds = self.ctx.cfg.comm.parameter_rounds
        parameters = [*self.ppo.actor.parameters(), *self.ppo.critic.parameters()]
        vector = torch.nn.utils.parameters_to_vector(parameters).detach().double().numpy()
        if rounds:
            with self.ctx.clock("gossip"):
                mixed = gossip.mix(vector, rounds)
            torch.nn.utils.vector_to_parameters(torch.as_tensor(mixed, dtype=torch.float32), parameters)
        self.ctx.records.append("ppo", step=step, **{key: stats[key] for key in PPO_STATS}, samples=len(rollout),
                                parameter_bytes=8 * vector.size * rounds)

    def state_dict(self) -> dict[str, Any]:
        return {"ppo": self.ppo.state_dict(), "generator": self.generator.get_state(),
                "eval_generator": self.eval_generator.get_state(),
                "warmup_rng": self.warmup_rng.bit_generator.state, "on_policy": [float(x) for x in self.on_policy],
                "rollout": [[t.obs, t.action, t.next_obs, [t.reward, float(t.terminated), float(t.truncated)]]
                            for t in self.rollout]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ppo.load_state_dict(state["ppo"])
        self.generator.set_state(state["generator"])
        self.eval_generator.set_state(state["eval_generator"])
        self.warmup_rng.bit_generator.state = state["warmup_rng"]
        self.on_policy = deque(bool(x) for x in state["on_policy"])
        self.rollout = [Transition(np.asarray(obs), np.asarray(action), float(flags[0]), np.asarray(next_obs),
                                   bool(flags[1]), bool(flags[2])) for obs, action, next_obs, flags in state["rollout"]]
