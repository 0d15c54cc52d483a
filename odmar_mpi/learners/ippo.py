"""IPPO: MAMBA's actor and critic trained with PPO on real data only (the baseline that isolates the world model).

The actor and critic read the agent's own observation (the critic attends over itself only: without a
world model there are no neighbour features to attend to). Every `ppo.rollout_steps` steps the
transitions gathered since the last update form one on-policy batch; the weights are then averaged with
the neighbours exactly as MAMBA's are (`comm.parameter_rounds`), so the two differ only in the model.
Episode ends stop the lambda-returns. An end by the time limit is not an end of the task: its reward is
bootstrapped with the critic's value of the state it cut off, r + gamma V(s'), where a termination has
nothing after it (a 25-step simple_spread episode always ends by truncation). PPO's ratio divides by the
log-probability each action had when it was taken (kept from `act`): on a graph of diameter D > 1 a
transition completes D - 1 steps after it was acted, so a rollout's first ones were chosen by the policy
before the last update and averaging.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import torch

from odmar_mpi.comm.consensus import VectorGossip
from env.coupled import random_action
from odmar_mpi.learners.base import (Learner, LearnerContext, Transition, average_with_neighbours, figures,
                                     require_finite)
from odmar_mpi.policy.ppo import PPO
from odmar_mpi.streams import shared_seed

PPO_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "entropy_coef", "returns_mean")


@torch.no_grad()
def truncation_bootstrapped_rewards(rollout: list[Transition], critic: torch.nn.Module, gamma: float) -> torch.Tensor:
    """Rewards (H,) of consecutive transitions, where each one cut off by the time limit (and not terminated)
    gets gamma times the critic's value of the state it reached added: the lambda-returns stop there, but the
    task would have gone on. On the critic's device."""
    device = next(critic.parameters()).device
    rewards = torch.tensor([t.reward for t in rollout], dtype=torch.float32, device=device)
    cut = [i for i, t in enumerate(rollout) if t.truncated and not t.terminated]
    if cut:
        reached = torch.as_tensor(np.stack([rollout[i].next_obs for i in cut]), dtype=torch.float32, device=device)
        values = critic(reached[None, :, None, :], torch.ones(len(cut), 1, dtype=torch.bool, device=device))[0]
        rewards[cut] += gamma * values
    return rewards


class IPPOLearner(Learner):
    """PPO on the agent's own real transitions, weights averaged with the neighbours after each update."""

    # one row per PPO update: its statistics, the transitions it used, the disagreement with the neighbours before
    # the averaging (largest relative difference to a neighbour's weights) and the bytes sent to each neighbour
    tables = {"ppo": ("step", *PPO_STATS, "samples", "disagreement", "parameter_bytes")}

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        cfg, world = ctx.cfg, ctx.world
        self.device = ctx.device
        self.model_every = cfg.ppo.rollout_steps
        self.ppo = PPO(world.obs_dim, world.n_actions, cfg.ppo, shared_seed(cfg.run.seed, "init"), ctx.device)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed("policy"))
        self.eval_generator = torch.Generator(ctx.device).manual_seed(ctx.seed("evaluate"))  # sampled evaluations
        self.warmup_rng = np.random.default_rng(ctx.seed("warmup"))
        self.random_rng = np.random.default_rng(ctx.seed("random_eval"))  # used once, before training
        self.rollout: list[Transition] = []
        self.behaviour_log_probs: list[float] = []  # of the rollout's actions, when they were taken
        # Per training step until its transition arrives: the log-probability of the action under the policy that
        # chose it, NaN for warm-up's random actions (PPO is on-policy: those are not trained on). With a graph of
        # diameter D > 1 the first D - 1 transitions of a rollout were chosen by the policy before the last update.
        self.acted: deque[float] = deque()

    @torch.no_grad()
    def act(self, obs: np.ndarray, mode: str, available: np.ndarray | None = None) -> np.ndarray:
        if mode in ("warmup", "random"):
            if mode == "warmup":
                self.acted.append(math.nan)
            return np.asarray(random_action(self.warmup_rng if mode == "warmup" else self.random_rng,
                                            self.ctx.world.n_actions, available))
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        mask = None if available is None else torch.as_tensor(available, device=self.device).bool().unsqueeze(0)
        if mode == "explore":
            action, log_prob = self.ppo.actor.act(x, self.generator, greedy=False, available=mask)
            self.acted.append(log_prob)
            return np.asarray(action)
        greedy = self.ctx.cfg.ppo.evaluation == "argmax"
        return np.asarray(self.ppo.actor.act(x, self.eval_generator, greedy=greedy, available=mask)[0])

    def observe(self, transition: Transition) -> None:
        log_prob = self.acted.popleft()
        if not math.isnan(log_prob):
            self.rollout.append(transition)
            self.behaviour_log_probs.append(log_prob)

    def update(self, step: int) -> None:
        """IPPO updates in `model_step`, once a rollout is gathered."""

    def model_step(self, step: int, gossip: VectorGossip) -> None:
        """One PPO update on the rollout gathered since the last one, then the weights' averaging step. The
        averaging is collective: a rank with nothing to train on (its agent out of the episodes, or all of the
        rollout from warm-up) joins it all the same."""
        if self.rollout:
            self.train(step, gossip)
        else:
            self.average(step, gossip)

    def average(self, step: int, gossip: VectorGossip) -> tuple[float, float]:
        """D-PSGD's averaging of the actor and critic with the neighbours; (disagreement before, bytes sent)."""
        with self.ctx.clock("averaging"):
            return average_with_neighbours([*self.ppo.actor.parameters(), *self.ppo.critic.parameters()], gossip,
                                           self.ctx.cfg.comm.parameter_rounds, self.ctx.rank, step,
                                           "IPPO's actor and critic parameters")

    def train(self, step: int, gossip: VectorGossip) -> None:
        """PPO on the rollout, the averaging, the table row."""
        rollout, self.rollout = self.rollout, []
        behaviour, self.behaviour_log_probs = self.behaviour_log_probs, []
        device = self.device
        obs = [t.obs for t in rollout] + [rollout[-1].next_obs]
        features = torch.as_tensor(np.stack(obs), dtype=torch.float32, device=device)[:, None, None, :]  # (H+1, 1, 1, F)
        ends = torch.tensor([t.terminated or t.truncated for t in rollout], dtype=torch.float32, device=device)
        masked = rollout[0].available is not None
        available = (torch.as_tensor(np.stack([t.available for t in rollout]), device=device).bool().unsqueeze(1)
                     if masked else None)
        with self.ctx.clock("updates"):
            rewards = truncation_bootstrapped_rewards(rollout, self.ppo.critic, self.ctx.cfg.ppo.gamma)
            batch = self.ppo.make_batch(features, torch.ones(1, 1, dtype=torch.bool, device=device),
                                        torch.tensor([[int(t.action)] for t in rollout], device=device),
                                        rewards.unsqueeze(-1), (1.0 - ends).unsqueeze(-1),
                                        torch.tensor(behaviour, dtype=torch.float32, device=device).unsqueeze(-1),
                                        available)
            stats = self.ppo.update(batch, self.generator)
        require_finite("IPPO's losses", [stats[key] for key in PPO_STATS], self.ctx.rank, step,
                       fix="lower ppo.actor_lr and ppo.critic_lr")
        disagreement, parameter_bytes = self.average(step, gossip)
        self.ctx.records.append("ppo", step=step, **{key: stats[key] for key in PPO_STATS}, samples=len(rollout),
                                disagreement=disagreement, parameter_bytes=parameter_bytes)

    def progress_note(self) -> str:
        """The policy's entropy and the critic's loss, of the last PPO update."""
        last = self.ctx.records.last
        return figures(("entropy", last("ppo", "entropy")), ("value loss", last("ppo", "value_loss")))

    def state_dict(self) -> dict[str, Any]:
        return {"ppo": self.ppo.state_dict(), "generator": self.generator.get_state(),
                "eval_generator": self.eval_generator.get_state(),
                "warmup_rng": self.warmup_rng.bit_generator.state, "acted": list(self.acted),
                "rollout": [[t.obs, t.action, t.next_obs, np.zeros(0) if t.available is None else t.available,
                             [t.reward, float(t.terminated), float(t.truncated), log_prob]]
                            for t, log_prob in zip(self.rollout, self.behaviour_log_probs)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ppo.load_state_dict(state["ppo"])
        self.generator.set_state(state["generator"])
        self.eval_generator.set_state(state["eval_generator"])
        self.warmup_rng.bit_generator.state = state["warmup_rng"]
        self.acted = deque(float(x) for x in state["acted"])
        self.rollout = [Transition(np.asarray(obs), np.asarray(action), float(flags[0]), np.asarray(next_obs),
                                   bool(flags[1]), bool(flags[2]), np.asarray(mask) if len(mask) else None)
                        for obs, action, next_obs, mask, flags in state["rollout"]]
        self.behaviour_log_probs = [float(flags[3]) for *_, flags in state["rollout"]]
