"""ODMAR: SAC trained MBPO-style on optimistic rollouts imagined in a sparse-GP world model whose
sufficient statistics every rank averages with its neighbours (docs/architecture.md, "ODMAR").

Every `model.update_every` steps: consensus sums the ranks' statistics (so every rank forms the
posterior a centralised GP would have on all agents' data), the posterior is formed, and
`model.rollout_batch` rollouts of `model.rollout_length` steps are imagined from real start states
with reward `reward(predicted state) + beta * predictive std`. SAC then trains on batches mixing
real and imagined transitions.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.learners.base import LearnerContext, Transition, figures, require_finite
from odmar_mpi.learners.sac import SACLearner
from odmar_mpi.model.inducing import inducing_points
from odmar_mpi.model.kernel import world_model_kernel
from odmar_mpi.model.sparse_gp import PosteriorError, SparseGP
from odmar_mpi.model.statistics import packed_size
from odmar_mpi.policy.imagination import imagine_rollouts
from odmar_mpi.policy.replay import Batch, ReplayBuffer, sample_mixed

HOLDOUT_CAPACITY = 1000


class ODMARLearner(SACLearner):
    """SAC + the consensus sparse-GP world model + optimistic imagination."""

    tables = {
        **SACLearner.tables,
        # model updates: gossip rounds and final disagreement, held-out prediction error, optimism;
        # posterior_failed = 1 where the posterior could not be formed and the previous one was kept
        "model": ("step", "consensus_rounds", "consensus_residual", "holdout_rmse", "bonus_mean", "std_mean",
                  "imagined_reward_mean", "posterior_failed"),
        # the model's prediction error on the transitions of each evaluation
        "model_eval": ("step", "model_rmse"),
    }

    def __init__(self, ctx: LearnerContext) -> None:
        super().__init__(ctx)
        cfg, world = ctx.cfg.model, ctx.world
        self.model_every = cfg.update_every
        self.imagined = ReplayBuffer(cfg.rollout_batch * cfg.rollout_length * cfg.imagined_keep, world.obs_dim,
                                     world.act_dim, ctx.device, seed=ctx.seed("imagined"))
        low = np.concatenate([world.obs_low, world.act_low])
        high = np.concatenate([world.obs_high, world.act_high])
        # Same seed on every rank: identical inducing points without a message.
        inducing = inducing_points(cfg.num_inducing, low, high, seed=ctx.cfg.run.seed, device=ctx.device)
        kernel = world_model_kernel(cfg.lengthscale, cfg.linear_variance, cfg.constant).to(ctx.device)
        self.model = SparseGP(inducing, kernel, noise_var=cfg.noise_var, out_dim=world.obs_dim)
        self.stats_buffer = np.empty(packed_size(cfg.num_inducing, world.obs_dim))
        self.posterior_statistics: np.ndarray | None = None  # the summed statistics of the current posterior
        self.holdout_x = np.zeros((HOLDOUT_CAPACITY, world.obs_dim + world.act_dim))
        self.holdout_y = np.zeros((HOLDOUT_CAPACITY, world.obs_dim))
        self.holdout_count = 0
        self.observed = 0
        self.residual = float("nan")
        self.starts_rng = np.random.default_rng(ctx.seed("starts"))

    def observe(self, transition: Transition) -> None:
        """Store the transition and feed the model's statistics, holding out every n-th to measure its error."""
        super().observe(transition)
        x = np.concatenate([transition.obs, transition.action])
        y = transition.next_obs - transition.obs
        every = self.ctx.cfg.model.holdout_every
        if every and self.observed % every == every - 1:
            slot = self.holdout_count % HOLDOUT_CAPACITY
            self.holdout_x[slot], self.holdout_y[slot] = x, y
            self.holdout_count += 1
        else:
            self.model.observe(x[None], y[None])
        self.observed += 1

    def model_step(self, step: int, gossip: VectorGossip) -> None:
        """Gossip the statistics, form the (centralised-equivalent) posterior, imagine optimistic rollouts."""
        cfg, clock, rank = self.ctx.cfg.model, self.ctx.clock, self.ctx.rank
        local = self.model.pack_statistics(out=self.stats_buffer)
        require_finite("model statistics", local, rank, step, fix="check the model settings")
        with clock("consensus"):
            result = gossip.sum(local, record_residuals=True)
        with clock("model"):
            require_finite("consensus statistics", result.value, rank, step, fix="check the model settings")
            failed = not self.fit_posterior(result.value, step)
            holdout_rmse = self.holdout_rmse()
        stats = {"bonus_mean": float("nan"), "std_mean": float("nan"), "reward_mean": float("nan")}
        if self.model.has_posterior:
            with clock("imagination"):
                starts = self.imagination_starts()
                batch, stats = imagine_rollouts(self.predict_next_state, self.ctx.world.reward_fn, self.sac, starts,
                                                cfg.rollout_length, cfg.beta)
                self.imagined.add_batch(*batch)
        self.residual = result.residuals[-1] if result.residuals else 0.0
        self.ctx.records.append("model", step=step, consensus_rounds=result.rounds, consensus_residual=self.residual,
                                holdout_rmse=holdout_rmse, bonus_mean=stats["bonus_mean"], std_mean=stats["std_mean"],
                                imagined_reward_mean=stats["reward_mean"], posterior_failed=float(failed))

    def imagination_starts(self) -> torch.Tensor:
        """Start states of the imagined rollouts, (rollout_batch, obs_dim): a share `model.uniform_starts` drawn
        uniformly over the world, the rest from the real buffer. Uniform starts let the critic learn the value
        of places the agent's own data never came near (the reward function is known, and the GP's linear
        kernel term extrapolates the dynamics); docs/architecture.md, "Departures"."""
        cfg, world = self.ctx.cfg.model, self.ctx.world
        n_uniform = round(cfg.uniform_starts * cfg.rollout_batch)
        uniform = torch.as_tensor(self.starts_rng.uniform(world.obs_low, world.obs_high, (n_uniform, world.obs_dim)),
                                  dtype=torch.float32, device=self.ctx.device)
        if n_uniform == cfg.rollout_batch:
            return uniform
        return torch.cat([self.real.sample_states(cfg.rollout_batch - n_uniform), uniform])

    def fit_posterior(self, summed: np.ndarray, step: int) -> bool:
        """Form the posterior from summed statistics; on failure keep the previous one, say so, return False."""
        try:
            self.model.fit(summed)
        except PosteriorError as err:
            kept = "keeps the previous posterior" if self.model.has_posterior else "has no posterior yet (no imagination)"
            print(f"odmar_mpi.run: rank {self.ctx.rank}, step {step}: warning: the model posterior could not be "
                  f"formed ({err}); the model {kept} and training goes on.", file=sys.stderr, flush=True)
            return False
        self.posterior_statistics = summed.copy()
        return True

    def predict_next_state(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model prediction for imagination: next-state mean (clipped to the world) and per-output std.

        The GP shares one kernel across outputs, so each output's std is sqrt of the same latent variance.
        """
        world = self.ctx.world
        x = torch.cat([states, actions], dim=-1).to(torch.float64)
        delta, variance = self.model.predict(x)
        low = torch.as_tensor(world.obs_low, dtype=torch.float64, device=x.device)
        high = torch.as_tensor(world.obs_high, dtype=torch.float64, device=x.device)
        next_mean = torch.minimum(torch.maximum(x[:, : world.obs_dim] + delta, low), high)
        std = variance.clamp_min(0.0).sqrt().unsqueeze(-1).expand(-1, world.obs_dim)
        return next_mean.to(states.dtype), std.to(states.dtype)

    def sample_batch(self) -> Batch:
        cfg = self.ctx.cfg.sac
        return sample_mixed(self.real, self.imagined, cfg.batch_size, cfg.real_ratio)

    def holdout_rmse(self) -> float:
        count = min(self.holdout_count, HOLDOUT_CAPACITY)
        if count == 0 or not self.model.has_posterior:
            return float("nan")
        return self.model_rmse(self.holdout_x[:count], self.holdout_y[:count])

    def model_rmse(self, x: np.ndarray, y: np.ndarray) -> float:
        mean, _ = self.model.predict(torch.as_tensor(x, dtype=torch.float64, device=self.ctx.device))
        return float(torch.sqrt(torch.mean((mean - torch.as_tensor(y, device=self.ctx.device)) ** 2)))

    def evaluated(self, step: int, transitions: list[Transition]) -> None:
        super().evaluated(step, transitions)
        rmse = float("nan")
        if self.model.has_posterior and transitions:
            x = np.array([np.concatenate([t.obs, t.action]) for t in transitions])
            y = np.array([t.next_obs - t.obs for t in transitions])
            rmse = self.model_rmse(x, y)
        self.ctx.records.append("model_eval", step=step, model_rmse=rmse)

    def progress_note(self) -> str:
        """The model's held-out error (RMSE of the predicted state change) at its last update and the critic's loss
        before the last evaluation (the consensus residual is in the records and the live logs)."""
        last = self.ctx.records.last
        return figures(("model RMSE", last("model", "holdout_rmse")), ("critic loss", last("sac", "critic_loss")))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(imagined=self.imagined.state_dict(), model=self.model.state_dict(),
                     holdout={"x": self.holdout_x.copy(), "y": self.holdout_y.copy(), "count": self.holdout_count},
                     observed=self.observed, residual=self.residual,
                     starts_rng=self.starts_rng.bit_generator.state)
        if self.posterior_statistics is not None:
            state["posterior_statistics"] = self.posterior_statistics
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.imagined.load_state_dict(state["imagined"])
        self.model.load_state_dict(state["model"])
        self.holdout_x[:] = state["holdout"]["x"]
        self.holdout_y[:] = state["holdout"]["y"]
        self.holdout_count = int(state["holdout"]["count"])
        self.observed = int(state["observed"])
        self.residual = float(state["residual"])
        self.starts_rng.bit_generator.state = state["starts_rng"]
        if "posterior_statistics" in state:
            # Refitting from the same summed statistics rebuilds the posterior bit for bit.
            self.posterior_statistics = np.asarray(state["posterior_statistics"])
            self.model.fit(self.posterior_statistics)
