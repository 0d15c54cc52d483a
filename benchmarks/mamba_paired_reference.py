"""Paired references for docs/mamba.md: team returns on exactly the episodes a run's evaluations play.

A run's evaluation copy of the world resets with `episode_seed(seed, k)` for k = 0, 1, ... in order: the
random-policy evaluation plays k = 0..E-1, the evaluation after warm-up the next E, and so on, so with
warm-up 250, 1000 training steps, eval_every 250 and E = 10 the final evaluation plays k = 50..59. On those
episodes this prints, per seed, the expected return of uniformly random actions (mean over 20 draws) and of
a hand-made policy (agent k steers to landmark k: the scale of what learning can reach).

    python benchmarks/mamba_paired_reference.py --first 50 --episodes 10 --seeds 0-4

With `--results DIR` (a results folder of benchmarks/learning.py) it scores every evaluation of every seed
there against its own episodes instead: the share of the way from random actions to the hand-made policy,
(return - random) / (hand-made - random), 0 for random play and 1 for the hand-made policy, and prints per
setting a markdown table (every seed's final share and final return minus random, the IQM over seeds with its
95% bootstrap interval) and the IQM of the share at each evaluation.

    python benchmarks/mamba_paired_reference.py --results docs/mamba --episodes 10
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# learning.py beside this file (an installed package named "benchmarks", e.g. flatland's, hides this folder's)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import load_results  # noqa: E402
from env.coupled import episode_seed, make_coupled_env  # noqa: E402
from odmar_mpi.report.compare import bootstrap_ci, iqm  # noqa: E402
from odmar_mpi.sweep import parse_seeds  # noqa: E402

N_AGENTS, LENGTH, DRAWS = 3, 25, 20
NOOP, LEFT, RIGHT, DOWN, UP = range(5)  # mpe2's discrete actions


def team_return(seed: int, episodes: range, policy, rng: np.random.Generator | None) -> float:
    env = make_coupled_env("simple_spread", N_AGENTS, LENGTH)
    totals = []
    for k in episodes:
        observations, _ = env.reset(seed=episode_seed(seed, k))
        total = 0.0
        for _ in range(LENGTH):
            actions = {agent: policy(i, observations[agent], rng) for i, agent in enumerate(env.possible_agents)}
            observations, rewards, *_ = env.step(actions)
            total += sum(rewards.values())
        totals.append(total)
    return float(np.mean(totals))


def uniform(agent: int, obs: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.integers(5))


def landmark_k(agent: int, obs: np.ndarray, rng: None) -> int:
    """Observation: own velocity (2), own position (2), landmarks relative to the agent (2 each), ...; steer along
    the larger axis of (landmark - 0.6 velocity), a crude brake."""
    velocity, landmark = obs[0:2], obs[4 + 2 * agent:6 + 2 * agent]
    direction = landmark - 0.6 * velocity
    if np.abs(direction).max() < 0.05:
        return NOOP
    if abs(direction[0]) > abs(direction[1]):
        return RIGHT if direction[0] > 0 else LEFT
    return UP if direction[1] > 0 else DOWN


def references(seed: int, window: range) -> tuple[float, float]:
    """(random actions' expected team return, the hand-made policy's) on the episodes `window` of `seed`."""
    random = float(np.mean([team_return(seed, window, uniform, np.random.default_rng(d)) for d in range(DRAWS)]))
    return random, team_return(seed, window, landmark_k, None)


def seed_of(summary: dict) -> int:
    return int(Path(summary["run"]).name.removeprefix("seed"))


def score_results(results: Path, episodes: int) -> None:
    """Print, per setting of a learning.py results folder, every seed's paired scores and their IQM."""
    cache: dict[tuple[int, int], tuple[float, float]] = {}
    for name, summaries in load_results(results).items():
        finals, cells, curves = [], [], {}
        for summary in sorted(summaries, key=seed_of):
            seed = seed_of(summary)
            for j, evaluation in enumerate(summary["eval"]):
                # the random-policy evaluation plays episodes 0..E-1; evaluation j the E after those before it
                first = (j + 1) * episodes
                if (seed, first) not in cache:
                    cache[seed, first] = references(seed, range(first, first + episodes))
                random, hand_made = cache[seed, first]
                share = (evaluation["team_return"] - random) / (hand_made - random)
                curves.setdefault(evaluation["step"] - summary["warmup_steps"], []).append(share)
            finals.append(share)
            cells.append(f"{share:.2f} ({evaluation['team_return'] - random:+.1f}, s{seed})")
        low, high = bootstrap_ci(np.array(finals))
        print(f"| {name} | {len(finals)} | {iqm(np.array(finals)):.2f} | [{low:.2f}, {high:.2f}] | {', '.join(cells)} |")
        print("  IQM share per evaluation (training steps: share): "
              + ", ".join(f"{step}: {iqm(np.array(v)):.2f}" for step, v in sorted(curves.items())
                          if len(v) == len(finals)))


@click.command()
@click.option("--first", default=50, show_default=True, help="Index of the final evaluation's first episode.")
@click.option("--episodes", default=10, show_default=True, help="Episodes per evaluation (run.eval_episodes).")
@click.option("--seeds", default="0-4", show_default=True, help="Seeds, e.g. 0-4 or 0,2.")
@click.option("--results", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Score the runs of this learning.py results folder against their own episodes.")
def main(first: int, episodes: int, seeds: str, results: Path | None) -> None:
    if results is not None:
        score_results(results, episodes)
        return
    window = range(first, first + episodes)
    for seed in parse_seeds(seeds):
        random, hand_made = references(seed, window)
        print(f"seed {seed}: episodes {first}-{first + episodes - 1}: random {random:.1f}, "
              f"landmark-k policy {hand_made:.1f}")


if __name__ == "__main__":
    main()
