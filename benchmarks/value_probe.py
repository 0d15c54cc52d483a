"""What one agent's critic believes, from a checkpoint: its policy's path from the start, Q at the start for a
step towards each of the best sites, the value V(s) = Q(s, pi(s)) at those sites, Q there for standing still,
and where the policy goes from each site (docs/learning.md, "Why agents still miss their best site").

A converged critic gives every site of the same value the same V (an agent standing on it collects the same
forever) and prefers the step towards the nearest one; a critic still on its way up from its initial values
prefers whatever site its own data has visited most.

With `--continue-steps N` the agent's ODMAR learner is rebuilt from the checkpoint and trains on for N steps
in imagination only (its real buffer as saved, no new real data; the model refitted from the saved consensus
statistics every `model.update_every` steps), under `--set` overrides, probing every `--probe-every` steps:
a few minutes on one core tells whether a change frees an agent from where a whole run left it.

    python benchmarks/value_probe.py runs/learning/improved/seed1 --rank 2 --step 2000
    python benchmarks/value_probe.py RUN --rank 2 --continue-steps 1000 --set sac.hold_floor=true
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from env.reward_world import agent_gains, move, reward_sites, start_positions  # noqa: E402
from odmar_mpi.checkpoint import load_checkpoint, local_steps  # noqa: E402
from odmar_mpi.comm.consensus import ConsensusResult  # noqa: E402
from odmar_mpi.config import load_config  # noqa: E402
from odmar_mpi.learners.base import LearnerContext  # noqa: E402
from odmar_mpi.learners.odmar import ODMARLearner  # noqa: E402
from odmar_mpi.learners.sac import build_sac  # noqa: E402
from odmar_mpi.policy.sac import SAC  # noqa: E402
from odmar_mpi.records import Records  # noqa: E402
from odmar_mpi.report import load_run  # noqa: E402
from odmar_mpi.streams import stream_seed  # noqa: E402
from odmar_mpi.worlds import make_world  # noqa: E402

PATH_STEPS = 12


class SavedConsensus:
    """Stands in for the neighbours: every consensus sum returns the statistics the checkpoint's posterior was
    formed from, so the rebuilt learner refits exactly that model."""

    def __init__(self, statistics: np.ndarray) -> None:
        self.statistics = statistics

    def sum(self, x: np.ndarray, **_) -> ConsensusResult:
        return ConsensusResult(self.statistics.copy(), 0, [])


def probe(sac: SAC, cfg: Any, rank: int, agents: int, sites: int, headline: str) -> None:
    """Print the policy's path from the start and, for the `sites` most valuable sites, the critic's values."""
    start, gain = start_positions(agents)[rank], agent_gains(agents, cfg.run.seed)[rank]
    positions, values = reward_sites(cfg.env.n_rewards)

    def q(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            s = torch.as_tensor(np.atleast_2d(states), dtype=torch.float32) / sac.obs_scale
            return sac.critic(s, torch.as_tensor(np.atleast_2d(actions), dtype=torch.float32)).amin(0).numpy()

    def v(state: np.ndarray) -> float:
        return float(q(state, sac.act(state, deterministic=True))[0])

    def path_from(position: np.ndarray) -> list[np.ndarray]:
        path = [position]
        for _ in range(PATH_STEPS):
            path.append(move(path[-1], sac.act(path[-1], deterministic=True), gain))
        return path

    path = path_from(start)
    print(f"{headline}: start ({start[0]:.2f}, {start[1]:.2f}); the policy's path, every 2 steps: "
          + " ".join(f"({x:.1f}, {y:.1f})" for x, y in path[::2]))
    own = sac.act(start, deterministic=True)
    print(f"  Q(start, pi(start)) = {q(start, own)[0]:.1f} with pi(start) = ({own[0]:.2f}, {own[1]:.2f})")
    for j in np.argsort(-values, kind="stable")[:sites]:
        site = positions[j]
        offset = site - start
        towards = offset / np.abs(offset).max()
        end = path_from(site)[-1]
        print(f"  site ({site[0]:g}, {site[1]:g}), value {values[j]:g}, {np.linalg.norm(offset):.1f} away: "
              f"Q(start, full step towards it) = {q(start, towards)[0]:.1f}; V at the site = {v(site):.1f}, "
              f"Q(site, stand still) = {q(site, np.zeros(2))[0]:.1f}; from the site the policy is at "
              f"({end[0]:.1f}, {end[1]:.1f}) after {PATH_STEPS} steps", flush=True)


def rebuilt_learner(run_dir: Path, rank: int, agents: int, step: int, overrides: tuple[str, ...]) -> ODMARLearner:
    """This rank's ODMAR learner as checkpointed at `step`, under the run's config with `overrides` applied."""
    cfg = load_config(run_dir / "config.toml", list(overrides) + ["run.device=cpu"])
    ctx = LearnerContext(cfg=cfg, world=make_world(cfg, rank, agents), rank=rank, n_agents=agents,
                         graph=cfg.comm.graph(agents, cfg.run.seed), device=torch.device("cpu"),
                         seed=lambda stream: stream_seed(cfg.run.seed, rank, stream),
                         records=Records(ODMARLearner.tables), clock=lambda phase: nullcontext())
    learner = ODMARLearner(ctx)
    learner.load_state_dict(load_checkpoint(run_dir, rank, step)["learner"])
    return learner


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rank", default=0, show_default=True, help="The agent.")
@click.option("--step", default=None, type=int, help="Checkpoint step [default: the rank's newest].")
@click.option("--sites", default=3, show_default=True, help="How many of the most valuable sites to probe.")
@click.option("--continue-steps", default=0, show_default=True,
              help="Train the agent on for this many steps in imagination only, probing as it goes (ODMAR runs).")
@click.option("--probe-every", default=250, show_default=True, help="Steps between probes while continuing.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Config override for the continued training, e.g. --set sac.hold_floor=true. Repeatable.")
def main(run_dir: Path, rank: int, step: int | None, sites: int, continue_steps: int, probe_every: int,
         overrides: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    run = load_run(run_dir)
    cfg, agents = run.config, len(run.ranks)
    step = max(local_steps(run_dir, rank)) if step is None else step
    if not continue_steps:
        sac = build_sac(cfg, make_world(cfg, rank, agents), "cpu", seed=0)
        sac.load_state_dict(load_checkpoint(run_dir, rank, step)["learner"]["sac"])
        probe(sac, cfg, rank, agents, sites, f"{run_dir}, rank {rank}, step {step}")
        return
    learner = rebuilt_learner(run_dir, rank, agents, step, overrides)
    if learner.posterior_statistics is None:
        raise click.ClickException(f"rank {rank}'s checkpoint at step {step} holds no model posterior to imagine with")
    consensus = SavedConsensus(learner.posterior_statistics)
    label = f"{run_dir}, rank {rank}, from step {step}" + (f" with {' '.join(overrides)}" if overrides else "")
    probe(learner.sac, cfg, rank, agents, sites, f"{label}: step {step}")
    for t in range(step + 1, step + continue_steps + 1):
        if t % learner.model_every == 0:
            learner.model_step(t, consensus)
        learner.update(t)
        if (t - step) % probe_every == 0:
            probe(learner.sac, cfg, rank, agents, sites, f"step {t}")


if __name__ == "__main__":
    main()
