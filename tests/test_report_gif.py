"""`report --gif` for every algorithm: tiny real runs of ODMAR, SAC, MAMBA and IPPO (`mpiexec -n 2 python -m
odmar_mpi.run`, one per module-scoped fixture), animated in one process from their checkpoints. These tests start
their own MPI jobs (so they run in the serial pass)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import env as world
from odmar_mpi.checkpoint import checkpoint_path
from odmar_mpi.comm.topology import ring
from odmar_mpi.config import Config
from odmar_mpi.report.animation import exchange_messages, load_learners, play_episode, write_gif
from odmar_mpi.report.cli import main
from odmar_mpi.report.runs import load_run, team_curve
from odmar_mpi.worlds import make_world
from test_run_e2e import MPIEXEC, ROOT
from test_run_e2e import TINY as REWARD_TINY  # warm-up 200 + 300 steps, checkpoints at 250 and 500, 50-step episodes

pytest.importorskip("PIL")
RANKS = 2


def spread_tiny() -> list[str]:
    """MAMBA's tiny config of tests/test_mamba_e2e.py: 50 + 150 steps, checkpoints at 100 and 200, 25-step episodes."""
    pytest.importorskip("mpe2")
    from test_mamba_e2e import TINY

    return list(TINY)


def train(folder: Path, overrides: list[str]) -> Path:
    run_dir = folder / "run"
    command = [MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "odmar_mpi.run", "--out", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.fixture(scope="module")
def odmar_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("odmar"), REWARD_TINY)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sac"), [*REWARD_TINY, "run.algorithm=sac"])


@pytest.fixture(scope="module")
def mamba_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("mamba"), spread_tiny())


@pytest.fixture(scope="module")
def ippo_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("ippo"), [*spread_tiny(), "run.algorithm=ippo"])


@pytest.mark.parametrize("algorithm", ["odmar", "sac"])
def test_the_gif_replays_the_final_evaluation_of_the_reward_world(algorithm, request, tmp_path):
    """The reward-collection world resets to the same state every episode and SAC evaluates deterministically,
    so the animated episode is the final evaluation's (eval_episodes = 1) with the learners of its step."""
    from PIL import Image

    run = load_run(request.getfixturevalue(f"{algorithm}_run"))
    gif = tmp_path / "team.gif"
    animation = write_gif(run, gif)
    assert animation.step == 500 and animation.frames == 26  # t = 0, 2, ..., 50
    final = team_curve(run)[1][-1]
    assert animation.team_return == pytest.approx(final, rel=1e-9)  # summation order differs from the gossip's
    with Image.open(gif) as image:
        assert image.n_frames == 26 and image.size == (300, 300)


@pytest.mark.parametrize("algorithm", ["mamba", "ippo"])
def test_the_gif_of_a_coupled_world_steps_every_copy_with_the_joint_action(algorithm, request, tmp_path):
    from PIL import Image

    run = load_run(request.getfixturevalue(f"{algorithm}_run"))
    step, learners, worlds, graph = load_learners(run)
    assert step == 200 and [w.agent_index for w in worlds] == [0, 1]
    assert all(learner.message_size > 0 for learner in learners) == (algorithm == "mamba")
    frames, team_return = play_episode(run.config, learners, worlds, graph)
    assert len(frames) == 14 and np.isfinite(team_return)  # t = 0, 2, ..., 24 and the last step, 25
    assert len({w.digest() for w in worlds}) == 1 and worlds[0].env.agents == []  # identical copies, episode over
    assert len({frame.tobytes() for frame in frames}) == 14  # the agents move
    gif = tmp_path / "team.gif"
    result = CliRunner().invoke(main, [str(run.path), "--gif", str(gif)])
    assert result.exit_code == 0, result.output
    assert "with the learners of step 200" in result.stderr
    with Image.open(gif) as image:
        assert image.n_frames == 14 and max(image.size) == 300


def test_the_gif_falls_back_to_the_newest_step_every_rank_has_and_can_load(odmar_run, tmp_path):
    missing = Path(shutil.copytree(odmar_run, tmp_path / "missing"))
    checkpoint_path(missing, 1, 500).unlink()  # rank 1 never wrote step 500
    assert write_gif(load_run(missing), tmp_path / "a.gif").step == 250
    damaged = Path(shutil.copytree(odmar_run, tmp_path / "damaged"))
    path = checkpoint_path(damaged, 0, 500)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated file fails its checks
    assert write_gif(load_run(damaged), tmp_path / "b.gif").step == 250


class Recorder:
    """A learner that sends its rank and records what it receives."""

    def __init__(self, rank: int, message_size: int) -> None:
        self.rank, self.message_size, self.received = rank, message_size, []

    def message(self, mode: str) -> np.ndarray:
        assert self.message_size, "a learner without messages was asked for one"
        return np.array([float(self.rank)])

    def receive(self, mode: str, messages: list[np.ndarray]) -> None:
        self.received.append((mode, [float(m[0]) for m in messages]))


def test_messages_reach_every_neighbour_in_its_neighbour_order():
    graph = ring(5)
    learners = [Recorder(rank, 1) for rank in range(5)]
    exchange_messages(learners, graph)
    for rank, learner in enumerate(learners):
        assert learner.received == [("evaluate", [float(j) for j in graph.neighbours[rank]])]
    silent = [Recorder(rank, 0) for rank in range(5)]
    exchange_messages(silent, graph)  # nothing to send: nobody is asked
    assert all(not learner.received for learner in silent)


class StandStill:
    message_size = 0

    def begin_episode(self, mode: str) -> None:
        pass

    def act(self, obs: np.ndarray, mode: str) -> np.ndarray:
        return np.zeros(world.ACT_DIM)


def test_the_reward_world_renders_every_second_step_and_the_last():
    agents = 3
    cfg = Config()
    cfg.env = dataclasses.replace(cfg.env, episode_length=7)
    worlds = [make_world(cfg, rank, agents) for rank in range(agents)]
    frames, team_return = play_episode(cfg, [StandStill()] * agents, worlds, ring(agents), every=2, size=120)
    assert len(frames) == 5  # t = 0, 2, 4, 6 and the last step 7
    assert frames[0].size == (120, 120)
    # Agents that never move collect the reward of their start positions at every step.
    still = world.reward(world.start_positions(agents), np.zeros((agents, world.ACT_DIM))).sum()
    assert still > 0 and team_return == pytest.approx(7 * still, rel=1e-12)  # round-off of 7 additions
