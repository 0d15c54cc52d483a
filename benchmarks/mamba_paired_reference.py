"""Paired references for docs/mamba.md: team returns on exactly the episodes a run's final evaluation plays.

A run's evaluation copy of the world resets with `episode_seed(seed, k)` for k = 0, 1, ... in order: the
random-policy evaluation plays k = 0..E-1, the evaluation after warm-up the next E, and so on, so with
warm-up 250, 1000 training steps, eval_every 250 and E = 10 the final evaluation plays k = 50..59. On those
episodes this prints, per seed, the expected return of uniformly random actions (mean over 20 draws) and of
a hand-made policy (agent k steers to landmark k: the scale of what learning can reach).

    python benchmarks/mamba_paired_reference.py --first 50 --episodes 10 --seeds 0-4
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.learning import parse_seeds  # noqa: E402
from env.coupled import episode_seed, make_coupled_env  # noqa: E402

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


@click.command()
@click.option("--first", default=50, show_default=True, help="Index of the final evaluation's first episode.")
@click.option("--episodes", default=10, show_default=True, help="Episodes per evaluation (run.eval_episodes).")
@click.option("--seeds", default="0-4", show_default=True, help="Seeds, e.g. 0-4 or 0,2.")
def main(first: int, episodes: int, seeds: str) -> None:
    window = range(first, first + episodes)
    for seed in parse_seeds(seeds):
        random = np.mean([team_return(seed, window, uniform, np.random.default_rng(d)) for d in range(DRAWS)])
        print(f"seed {seed}: episodes {first}-{first + episodes - 1}: random {random:.1f}, "
              f"landmark-k policy {team_return(seed, window, landmark_k, None):.1f}")


if __name__ == "__main__":
    main()
