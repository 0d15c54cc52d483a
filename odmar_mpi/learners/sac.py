"""SAC on real data only: the model-free baseline, and the policy half of ODMAR."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from odmar_mpi.learners.base import Learner, LearnerContext, Transition, figures, require_finite
from odmar_mpi.policy.replay import Batch, ReplayBuffer
from odmar_mpi.policy.sac import SAC

SAC_STATS = ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean")


def build_sac(cfg: Any, world: Any, device: torch.device | str, seed: int) -> SAC:
    """The agent's SAC for `world` (observations divided by `sac.obs_scale`, 0 = the world's extent), as the
    learner and the report's animation both build it, so a checkpoint's state fits either."""
    obs_scale = cfg.sac.obs_scale or float(np.max(np.abs(np.concatenate([world.obs_low, world.obs_high]))))
    floor = hold_value(world, cfg.sac.gamma) if cfg.sac.hold_floor else None
    return SAC(world.obs_dim, world.act_dim, cfg.sac, device, seed=seed, obs_scale=obs_scale, value_floor=floor)


def hold_value(world: Any, gamma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """states -> the discounted return of holding still there for ever, reward(s, hold) / (1 - gamma): a lower
    bound on any state's value in a world whose `hold_action` keeps the agent in place and whose rewards never
    deplete (docs/architecture.md, "Departures"). It bounds the agent's own return, which is what imagination
    rewards; the few real transitions of a team-reward run carry the team's."""
    hold = getattr(world, "hold_action", None)
    if hold is None:
        raise ValueError(f"sac.hold_floor needs a world with an action that holds the agent in place; "
                         f"{type(world).__name__} has none: set sac.hold_floor = false")
    actions: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def value(states: torch.Tensor) -> torch.Tensor:
        key = (states.device, states.dtype)
        if key not in actions:
            actions[key] = torch.as_tensor(hold, dtype=states.dtype, device=states.device)
        return world.reward_fn(states, actions[key]) / (1.0 - gamma)

    return value


class SACLearner(Learner):
    """SAC with its replay buffer: `sac.updates_per_step` updates per step on batches of real transitions."""

    tables = {"sac": ("step", *SAC_STATS)}

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        cfg = ctx.cfg.sac
        self.sac = build_sac(ctx.cfg, ctx.world, ctx.device, ctx.seed("policy"))
        self.real = ReplayBuffer(cfg.buffer_size, ctx.world.obs_dim, ctx.world.act_dim, ctx.device,
                                 seed=ctx.seed("replay"))
        self.warmup_rng = np.random.default_rng(ctx.seed("warmup"))
        self.random_rng = np.random.default_rng(ctx.seed("random_eval"))  # used once, before training
        self.stat_sums: dict[str, torch.Tensor] = {}
        self.stat_count = 0

    def act(self, obs: np.ndarray, mode: str, available: np.ndarray | None = None) -> np.ndarray:
        if mode in ("warmup", "random"):
            return self.ctx.world.sample_action(self.warmup_rng if mode == "warmup" else self.random_rng)
        return self.sac.act(obs, deterministic=mode == "evaluate")

    def observe(self, transition: Transition) -> None:
        t = transition
        self.real.add(t.obs, t.action, t.reward, t.next_obs, t.terminated)

    def sample_batch(self) -> Batch:
        return self.real.sample(self.ctx.cfg.sac.batch_size)

    def update(self, step: int) -> None:
        for _ in range(self.ctx.cfg.sac.updates_per_step):
            stats = self.sac.update(self.sample_batch())
            for key in SAC_STATS:  # summed on the device: no host sync per update
                self.stat_sums[key] = self.stat_sums[key] + stats[key] if key in self.stat_sums else stats[key].clone()
            self.stat_count += 1

    def evaluated(self, step: int, transitions: list[Transition]) -> None:
        """Record the SAC statistics averaged over the updates since the previous evaluation."""
        if not self.stat_count:
            return
        means = {key: float(value) / self.stat_count for key, value in self.stat_sums.items()}
        require_finite(f"SAC {', '.join(means)}", list(means.values()), self.ctx.rank, step, fix="lower sac.lr")
        self.ctx.records.append("sac", step=step, **means)
        self.stat_sums, self.stat_count = {}, 0

    def progress_note(self) -> str:
        """The critic's loss and the temperature, averaged over the updates before the last evaluation."""
        last = self.ctx.records.last
        return figures(("critic loss", last("sac", "critic_loss")), ("alpha", last("sac", "alpha")))

    def state_dict(self) -> dict[str, Any]:
        return {"sac": self.sac.state_dict(), "real": self.real.state_dict(), "stat_sums": dict(self.stat_sums),
                "stat_count": self.stat_count, "warmup_rng": self.warmup_rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sac.load_state_dict(state["sac"])
        self.real.load_state_dict(state["real"])
        self.stat_sums = {key: value.to(self.ctx.device) for key, value in state["stat_sums"].items()}
        self.stat_count = int(state["stat_count"])
        self.warmup_rng.bit_generator.state = state["warmup_rng"]
