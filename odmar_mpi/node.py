"""One agent = one MPI rank: wires its env copy, world model, policy and neighbour gossip.

`Node.train` is the loop of DESIGN.md section 1, read top to bottom:
act, step the own env copy, share the reward, store, feed the model; every K steps gossip the
model statistics, form the posterior and imagine optimistic rollouts; U SAC updates; evaluate;
checkpoint.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from mpi4py import MPI

import env as world
from odmar_mpi import __version__
from odmar_mpi.checkpoint import CheckpointError, load_checkpoint, local_steps, save_checkpoint
from odmar_mpi.comm.consensus import Consensus
from odmar_mpi.comm.topology import build_graph
from odmar_mpi.comm.weights import mixing_matrix
from odmar_mpi.config import Config, to_toml
from odmar_mpi.device import local_rank, select_device
from odmar_mpi.model.inducing import inducing_points
from odmar_mpi.model.kernel import world_model_kernel
from odmar_mpi.model.sparse_gp import SparseGP
from odmar_mpi.model.statistics import packed_size
from odmar_mpi.policy.imagination import imagine_rollouts
from odmar_mpi.policy.replay import ReplayBuffer, sample_mixed
from odmar_mpi.policy.sac import SAC, SACConfig
from odmar_mpi.records import Records, records_path

PHASES = ("env", "model", "gossip", "imagination", "updates", "eval", "checkpoint")
HOLDOUT_CAPACITY = 1000
SAC_STATS = ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean")


class NonFiniteError(RuntimeError):
    """NaN or inf in a loss or in the model statistics."""


class PhaseClock:
    """Cumulative wall-clock seconds per phase of the loop."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Independent 63-bit seed for one of a rank's random streams."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(rank, stream)).generate_state(1, np.uint64)[0] >> 1)


class Node:
    """One agent. Every rank constructs one with the same config; construction is collective."""

    def __init__(self, cfg: Config, comm: MPI.Comm, run_dir: Path) -> None:
        self.cfg = cfg
        self.comm = comm
        self.rank = comm.Get_rank()
        self.n_agents = comm.Get_size()
        self.run_dir = Path(run_dir)
        torch.set_num_threads(cfg.run.torch_threads)
        # Our streams use their own generators; the global ones are seeded too, so nothing depends on process entropy.
        torch.manual_seed(stream_seed(cfg.run.seed, self.rank, 4))
        random.seed(stream_seed(cfg.run.seed, self.rank, 5))
        self.device = select_device(cfg.run.device, local_rank(comm))

        graph = build_graph(
            cfg.comm.topology, self.n_agents, seed=cfg.run.seed,
            edges_file=cfg.comm.edges_file or None, radius=cfg.comm.radius, p=cfg.comm.edge_probability,
        )
        self.stats_size = packed_size(cfg.model.num_inducing, world.OBS_DIM) if cfg.uses_model else 1
        self.consensus = Consensus(
            comm, graph, mixing_matrix(graph, cfg.comm.weights), algorithm=cfg.comm.algorithm,
            rounds=cfg.comm.rounds or None, tol=cfg.comm.tol or None, timeout_s=cfg.comm.timeout_s,
            size=self.stats_size,
        )

        env_args = dict(n_agents=self.n_agents, agent_id=self.rank, seed=cfg.run.seed, n_rewards=cfg.env.n_rewards,
                        action_penalty=cfg.env.action_penalty, episode_length=cfg.env.episode_length)
        self.env = world.AgentEnv(**env_args)
        self.eval_env = world.AgentEnv(**env_args)
        self.rng = np.random.default_rng(stream_seed(cfg.run.seed, self.rank, 0))

        self.sac = SAC(world.OBS_DIM, world.ACT_DIM, SACConfig(**cfg.policy_settings()), self.device,
                       seed=stream_seed(cfg.run.seed, self.rank, 1), obs_scale=world.WORLD_HIGH)
        self.real = ReplayBuffer(cfg.sac.buffer_size, world.OBS_DIM, world.ACT_DIM, self.device,
                                 seed=stream_seed(cfg.run.seed, self.rank, 2))
        imagined_capacity = cfg.model.rollout_batch * cfg.model.rollout_length * cfg.model.imagined_keep
        self.imagined = ReplayBuffer(imagined_capacity, world.OBS_DIM, world.ACT_DIM, self.device,
                                     seed=stream_seed(cfg.run.seed, self.rank, 3))

        self.model: SparseGP | None = None
        if cfg.uses_model:
            low = [world.WORLD_LOW] * world.OBS_DIM + [-1.0] * world.ACT_DIM
            high = [world.WORLD_HIGH] * world.OBS_DIM + [1.0] * world.ACT_DIM
            # Same seed on every rank: identical inducing points without a message.
            inducing = inducing_points(cfg.model.num_inducing, low, high, seed=cfg.run.seed, device=self.device)
            kernel = world_model_kernel(cfg.model.lengthscale, cfg.model.linear_variance, cfg.model.constant).to(self.device)
            self.model = SparseGP(inducing, kernel, noise_var=cfg.model.noise_var, out_dim=world.OBS_DIM)
            self.stats_buffer = np.empty(self.stats_size)
        self.posterior_statistics: np.ndarray | None = None  # the summed statistics of the current posterior
        self.holdout_x = np.zeros((HOLDOUT_CAPACITY, world.OBS_DIM + world.ACT_DIM))
        self.holdout_y = np.zeros((HOLDOUT_CAPACITY, world.OBS_DIM))
        self.holdout_count = 0

        self.records = Records()
        self.clock = PhaseClock()
        self.step = 0
        self.obs = self.env.reset()
        self.episode_return = 0.0
        self.episode_own_return = 0.0
        self.sac_sums: dict[str, torch.Tensor] = {}
        self.sac_count = 0
        self.residual = float("nan")
        self.last_team_eval = float("nan")
        self.stop_requested = False

    # ------------------------------------------------------------------ the loop

    def train(self) -> bool:
        """Run until warmup_steps + train_steps environment steps, checkpointing on the way.

        Returns False when a stop was requested (SIGTERM/SIGUSR1 on any rank): every rank then
        checkpoints at the same agreed step and returns, so the run can be resumed.
        """
        cfg = self.cfg
        warmup, total = cfg.run.warmup_steps, cfg.total_steps
        self.started = time.perf_counter()
        self.started_step = self.step
        while self.step < total:
            if self.step % cfg.run.stop_check_every == 0 and self.stop_agreed():
                self.checkpoint()
                return False
            learning = self.step >= warmup
            action = self.sac.act(self.obs) if learning else self.rng.uniform(-1.0, 1.0, world.ACT_DIM)
            with self.clock("env"):
                next_obs, own_reward, truncated = self.env.step(action)
            with self.clock("gossip"):
                reward = self.team_reward(own_reward)
            self.real.add(self.obs, action, reward, next_obs, False)
            with self.clock("model"):
                self.observe_transition(self.obs, action, next_obs)
            self.end_of_step_bookkeeping(next_obs, reward, own_reward, truncated)
            self.step += 1

            if self.model is not None and self.step >= warmup and self.step % cfg.model.update_every == 0:
                self.update_model_and_imagine()
            if self.step > warmup:
                with self.clock("updates"):
                    self.update_policy(cfg.sac.updates_per_step)
            if self.step >= warmup and (self.step - warmup) % cfg.run.eval_every == 0:
                self.evaluate()
            if cfg.run.progress_every and self.step % cfg.run.progress_every == 0:
                self.print_progress()
            if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                self.checkpoint()
        if not cfg.run.checkpoint_every or self.step % cfg.run.checkpoint_every:
            self.checkpoint()
        return True

    def request_stop(self, *_: object) -> None:
        """Signal handler: only sets a flag; the loop acts on it at an agreed step boundary."""
        self.stop_requested = True

    def stop_agreed(self) -> bool:
        """True on every rank as soon as any rank has been asked to stop (max-gossip of the flag)."""
        with self.clock("gossip"):
            return self.consensus.maximum_scalar(1.0 if self.stop_requested else 0.0) > 0.0

    # ------------------------------------------------------------------ pieces of a step

    def team_reward(self, own_reward: float) -> float:
        """The reward this agent learns from: the team's (exact sum over ranks by gossip) or its own."""
        if self.cfg.env.reward_sharing == "team":
            return self.consensus.sum_scalar(own_reward)
        return own_reward

    def observe_transition(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> None:
        """Feed the model's statistics, holding out every n-th transition to measure its error."""
        if self.model is None:
            return
        x = np.concatenate([obs, action])
        y = next_obs - obs
        every = self.cfg.model.holdout_every
        if every and self.step % every == every - 1:
            slot = self.holdout_count % HOLDOUT_CAPACITY
            self.holdout_x[slot], self.holdout_y[slot] = x, y
            self.holdout_count += 1
        else:
            self.model.observe(x[None], y[None])

    def end_of_step_bookkeeping(self, next_obs: np.ndarray, reward: float, own_reward: float, truncated: bool) -> None:
        self.episode_return += reward
        self.episode_own_return += own_reward
        if truncated:
            self.records.append("episodes", step=self.step + 1, own_return=self.episode_own_return,
                                **{"return": self.episode_return})
            self.episode_return = self.episode_own_return = 0.0
            self.obs = self.env.reset()
        else:
            self.obs = next_obs

    def update_model_and_imagine(self) -> None:
        """Gossip the statistics, form the (centralised-equivalent) posterior, imagine optimistic rollouts."""
        cfg = self.cfg.model
        local = self.model.pack_statistics(out=self.stats_buffer)
        self.require_finite("model statistics", local)
        with self.clock("gossip"):
            result = self.consensus.sum(local, record_residuals=True)
        with self.clock("model"):
            self.require_finite("consensus statistics", result.value)
            self.model.fit(result.value)
            self.posterior_statistics = result.value.copy()
            holdout_rmse = self.holdout_rmse()
        with self.clock("imagination"):
            starts = self.real.sample_states(cfg.rollout_batch)
            batch, stats = imagine_rollouts(self.predict_next_state, self.env.reward_fn, self.sac, starts,
                                            cfg.rollout_length, cfg.beta)
            self.imagined.add_batch(*batch)
        self.residual = result.residuals[-1] if result.residuals else 0.0
        self.records.append("model", step=self.step, consensus_rounds=result.rounds, consensus_residual=self.residual,
                            holdout_rmse=holdout_rmse, bonus_mean=stats["bonus_mean"], std_mean=stats["std_mean"],
                            imagined_reward_mean=stats["reward_mean"])

    def predict_next_state(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model prediction for imagination: next-state mean (clipped to the world) and per-output std.

        The GP shares one kernel across outputs, so each output's std is sqrt of the same latent variance.
        """
        x = torch.cat([states, actions], dim=-1).to(torch.float64)
        delta, variance = self.model.predict(x)
        next_mean = (x[:, : world.OBS_DIM] + delta).clamp(world.WORLD_LOW, world.WORLD_HIGH)
        std = variance.clamp_min(0.0).sqrt().unsqueeze(-1).expand(-1, world.OBS_DIM)
        return next_mean.to(states.dtype), std.to(states.dtype)

    def holdout_rmse(self) -> float:
        count = min(self.holdout_count, HOLDOUT_CAPACITY)
        if count == 0:
            return float("nan")
        return self.model_rmse(self.holdout_x[:count], self.holdout_y[:count])

    def model_rmse(self, x: np.ndarray, y: np.ndarray) -> float:
        mean, _ = self.model.predict(torch.as_tensor(x, dtype=torch.float64, device=self.device))
        return float(torch.sqrt(torch.mean((mean - torch.as_tensor(y, device=self.device)) ** 2)))

    def update_policy(self, updates: int) -> None:
        cfg = self.cfg.sac
        for _ in range(updates):
            batch = sample_mixed(self.real, self.imagined, cfg.batch_size, cfg.real_ratio)
            stats = self.sac.update(batch)
            for key in SAC_STATS:
                self.sac_sums[key] = self.sac_sums[key] + stats[key] if key in self.sac_sums else stats[key].clone()
            self.sac_count += 1

    def evaluate(self) -> None:
        """Deterministic episodes on the own env copy; the team return is the gossip sum over agents."""
        with self.clock("eval"):
            returns, xs, ys = [], [], []
            for _ in range(self.cfg.run.eval_episodes):
                obs, total, truncated = self.eval_env.reset(), 0.0, False
                while not truncated:
                    action = self.sac.act(obs, deterministic=True)
                    next_obs, reward, truncated = self.eval_env.step(action)
                    xs.append(np.concatenate([obs, action]))
                    ys.append(next_obs - obs)
                    total += reward
                    obs = next_obs
                returns.append(total)
            own = float(np.mean(returns))
            model_rmse = self.model_rmse(np.array(xs), np.array(ys)) if self.model is not None and self.model.has_posterior else float("nan")
        with self.clock("gossip"):
            self.last_team_eval = self.consensus.sum_scalar(own)
        self.records.append("eval", step=self.step, own_return=own, team_return=self.last_team_eval, model_rmse=model_rmse)
        self.log_sac_stats()
        self.records.append("timing", step=self.step, **self.clock.seconds)
        if not self.cfg.run.progress_every:
            self.print_progress()

    def log_sac_stats(self) -> None:
        if not self.sac_count:
            return
        means = {key: float(value) / self.sac_count for key, value in self.sac_sums.items()}
        for key, value in means.items():
            self.require_finite(f"SAC {key}", np.array([value]))
        self.records.append("sac", step=self.step, **means)
        self.sac_sums, self.sac_count = {}, 0

    def require_finite(self, quantity: str, values: np.ndarray) -> None:
        if not np.isfinite(values).all():
            raise NonFiniteError(
                f"rank {self.rank}, step {self.step}: {quantity} contain NaN or inf; the run stops here and keeps "
                f"its last good checkpoint in {self.run_dir / 'checkpoints'}. Lower sac.lr or check the model settings."
            )

    def print_progress(self) -> None:
        if self.rank != 0:
            return
        elapsed = time.perf_counter() - self.started
        rate = (self.step - self.started_step) / elapsed if elapsed > 0 else float("nan")
        phase = "warm-up" if self.step <= self.cfg.run.warmup_steps else "train"
        print(f"step {self.step:>7d} [{phase}] | team eval return {self.last_team_eval:9.2f} | "
              f"{rate:6.1f} steps/s | consensus residual {self.residual:.1e}", flush=True)

    # ------------------------------------------------------------------ checkpoints and records

    def record_attrs(self) -> dict[str, object]:
        return {"config": to_toml(self.cfg), "version": __version__, "rank": self.rank, "agents": self.n_agents,
                "device": str(self.device)}

    def write_records(self) -> None:
        self.records.write(records_path(self.run_dir, self.rank), self.record_attrs())

    def checkpoint(self) -> None:
        with self.clock("checkpoint"):
            save_checkpoint(self.run_dir, self.rank, self.step, self.state_dict(), keep=self.cfg.run.keep_checkpoints)
            self.write_records()

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {
            "step": self.step,
            "obs": self.obs.copy(),
            "env": {"position": self.env.position.copy(), "t": self.env.t},
            "episode_return": self.episode_return,
            "episode_own_return": self.episode_own_return,
            "sac": self.sac.state_dict(),
            "real": self.real.state_dict(),
            "imagined": self.imagined.state_dict(),
            "sac_sums": dict(self.sac_sums),
            "sac_count": self.sac_count,
            "holdout": {"x": self.holdout_x.copy(), "y": self.holdout_y.copy(), "count": self.holdout_count},
            "records": self.records.state(),
            "residual": self.residual,
            "last_team_eval": self.last_team_eval,
            "clock": dict(self.clock.seconds),  # wall-clock: the one part that differs between identical runs
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()},
        }
        if self.model is not None:
            state["model"] = self.model.state_dict()
            if self.posterior_statistics is not None:
                state["posterior_statistics"] = self.posterior_statistics
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.obs = np.asarray(state["obs"])
        self.env.position[:] = state["env"]["position"]
        self.env.t = int(state["env"]["t"])
        self.episode_return = float(state["episode_return"])
        self.episode_own_return = float(state["episode_own_return"])
        self.sac.load_state_dict(state["sac"])
        self.real.load_state_dict(state["real"])
        self.imagined.load_state_dict(state["imagined"])
        self.sac_sums = {key: value.to(self.device) for key, value in state["sac_sums"].items()}
        self.sac_count = int(state["sac_count"])
        self.holdout_x[:] = state["holdout"]["x"]
        self.holdout_y[:] = state["holdout"]["y"]
        self.holdout_count = int(state["holdout"]["count"])
        self.records.load_state(state["records"])
        self.residual = float(state["residual"])
        self.last_team_eval = float(state["last_team_eval"])
        self.clock.seconds.update(state["clock"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        python_state = state["rng"]["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        if self.model is not None:
            self.model.load_state_dict(state["model"])
            if "posterior_statistics" in state:
                # Refitting from the same summed statistics rebuilds the posterior bit for bit.
                self.posterior_statistics = np.asarray(state["posterior_statistics"])
                self.model.fit(self.posterior_statistics)

    def resume(self) -> int:
        """Load the newest checkpoint step that every rank has (agreed by min-gossip). Collective."""
        mine = local_steps(self.run_dir, self.rank)
        common = int(self.consensus.minimum_scalar(float(mine[-1]) if mine else -1.0))
        if common < 0:
            who = f"rank {self.rank} has none" if not mine else "another rank has none (see its message)"
            raise CheckpointError(f"cannot resume {self.run_dir}: no checkpoint common to every rank; {who}.")
        loaded = True
        try:
            self.load_state_dict(load_checkpoint(self.run_dir, self.rank, common))
        except CheckpointError as err:
            print(f"odmar_mpi.run: error: {err}", file=sys.stderr, flush=True)  # only this rank knows the file
            loaded = False
        if self.consensus.minimum_scalar(1.0 if loaded else 0.0) < 1.0:
            raise CheckpointError(f"cannot resume {self.run_dir} from step {common}: a rank could not load its checkpoint (see its message above).")
        return common
