"""SMAX and Flatland over real MPI ranks (CI: 2 and 4 ranks), one rank per agent, the real Node and learners.

The scenario follows the rank count N: SMAX "Nm_vs_2Nm" (N marines against twice as many, so allies die and
leave the episode while the others fight on) and Flatland "tiny_N" (N trains). Whole episodes are played with
`Node.play_step`, as the training loop plays them, first with warm-up's random actions, then with the actor's.

- Every rank's world copy has the same digest after every step, and every rank steps the same number of steps
  in every episode, including the steps after some agent has left.
- A rank whose agent has left gets None from `play_step` at every step until the episode is over for all, after a
  last transition that terminated; with MAMBA its neighbours' learners mark it invalid (absent) in the messages
  of exactly those steps.
- Every action a learner takes is allowed by the mask its world copy gave for that step.

Collectives come before assertions, so a failure on one rank cannot leave the others waiting.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI

from odmar_mpi.config import load_config
from odmar_mpi.node import Node

TINY = ["env.reward_sharing=local", "comm.topology=ring", "comm.algorithm=finite-time", "comm.rounds=0",
        "comm.timeout_s=300", "world_model.deterministic=16", "world_model.n_categoricals=4",
        "world_model.n_classes=4", "world_model.hidden=16", "world_model.embed=16", "world_model.model_hidden=16",
        "world_model.head_hidden=16", "world_model.comm_heads=4", "mamba.batch_size=4", "mamba.sequence_length=6",
        "mamba.buffer_size=500", "ppo.actor_hidden=16", "ppo.critic_hidden=16", "ppo.critic_heads=4",
        "ppo.minibatch_size=64"]
WORLDS = {  # world -> (package, scenario for N ranks, time limit, episodes of warm-up, episodes of the actor)
    "smax": ("jaxmarl", lambda n: f"{n}m_vs_{2 * n}m", 30, 4, 4),
    "flatland": ("flatland", lambda n: f"tiny_{n}", 40, 2, 2),
}


def make_node(comm: MPI.Comm, world: str, algorithm: str, tmp_path: Any) -> Node:
    package, scenario, limit, _, _ = WORLDS[world]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (make install)")
    cfg = load_config(None, [*TINY, f"run.algorithm={algorithm}", f"env.world={world}",
                             f"env.scenario={scenario(comm.Get_size())}", f"env.episode_length={limit}"])
    return Node(cfg, comm, cfg.comm.graph(comm.Get_size(), cfg.run.seed), tmp_path)


def play_episodes(node: Node, modes: list[str]) -> list[list[dict[str, Any]]]:
    """One episode per entry of `modes` ("warmup" or "explore"), played step by step as `Node.train` plays them.
    Per episode, per step: the world's digest after the step, whether the own agent was in the episode before it,
    the mask the world gave, what play_step returned, and (MAMBA) which neighbour slots held a valid message."""
    episodes = []
    obs = node.obs
    for mode in modes:
        steps, over = [], False
        while not over:
            active, mask = node.world.active, node.world.available_actions()
            transition, _, over = node.play_step(node.world, obs, mode)
            copies = getattr(node.learner, "copies", None)
            steps.append({
                "digest": node.world.digest(), "active": active, "mask": None if mask is None else mask.copy(),
                "none": transition is None, "action": None if transition is None else int(transition.action),
                "available": None if transition is None else transition.available,
                "ended": transition is not None and (transition.terminated or transition.truncated),
                "valid": None if copies is None else copies["train"].messages.valid[0].tolist()})
            if transition is not None:
                obs = transition.next_obs
        episodes.append(steps)
        obs = node.start_episode(node.world, "explore")
    return episodes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("world, algorithm", [("smax", "mamba"), ("smax", "ippo"), ("flatland", "mamba"),
                                              ("flatland", "ippo")])
def test_copies_stay_identical_and_agents_that_leave_are_absent_until_the_episode_ends(comm, tmp_path, world,
                                                                                       algorithm):
    node = make_node(comm, world, algorithm, tmp_path)
    _, _, _, warmup, explore = WORLDS[world]
    episodes = play_episodes(node, ["warmup"] * warmup + ["explore"] * explore)
    rank, neighbours = comm.Get_rank(), node.cfg.comm.graph(comm.Get_size(), node.cfg.run.seed).neighbours
    node.free()
    everyone = comm.allgather(episodes)

    # the copies: the same digest after every step, the same number of steps in every episode
    lengths = [len(e) for e in episodes]
    for other in everyone:
        assert [len(e) for e in other] == lengths
        assert [[s["digest"] for s in e] for e in other] == [[s["digest"] for s in e] for e in episodes]
    assert all(1 < length <= WORLDS[world][2] for length in lengths), lengths

    # the own agent: in the episode up to a last transition that ended its part, then None to the episode's end
    for steps in episodes:
        assert [s["none"] for s in steps] == [not s["active"] for s in steps]
        acted = sum(1 for s in steps if not s["none"])
        assert acted >= 1 and all(not s["none"] for s in steps[:acted]) and all(s["none"] for s in steps[acted:])
        if acted < len(steps):
            assert steps[acted - 1]["ended"]
    absent_steps = sum(s["none"] for other in everyone for e in other for s in e)
    if world == "smax":
        assert absent_steps > 0  # units died while the battle went on: the steps above include leaving

    # every action taken was allowed by the mask the world gave for that step, in both modes
    taken = [(s["mask"], s["available"], s["action"]) for e in episodes for s in e if not s["none"]]
    assert all(np.array_equal(mask, available) for mask, available, _ in taken)
    assert all(mask[action] == 1 for mask, _, action in taken)
    assert any(not mask.all() for mask, _, _ in taken)  # the masks did forbid something

    # MAMBA: a neighbour's slot is invalid exactly at the steps that neighbour was out of the episode
    if algorithm == "mamba":
        for slot, j in enumerate(neighbours[rank]):
            for mine, theirs in zip(episodes, everyone[j]):
                assert [s["valid"][slot] for s in mine] == [not s["none"] for s in theirs], (rank, j)
        if world == "smax":  # some neighbour was absent at some step (from the gathered data: no collective here)
            assert any(not v for other in everyone for e in other for s in e for v in s["valid"])


@pytest.mark.mpi(min_size=2)
def test_mambas_actions_are_always_allowed_over_many_sampled_steps(comm, tmp_path):
    """Warm-up's random actions and the actor's sampled ones over many SMAX steps: all allowed by the step's mask."""
    node = make_node(comm, "smax", "mamba", tmp_path)
    episodes = play_episodes(node, ["warmup"] * 6 + ["explore"] * 10)
    node.free()
    taken = [(s["mask"], s["action"]) for e in episodes for s in e if not s["none"]]
    counts = comm.allgather((len(taken), sum(mask[action] == 1 for mask, action in taken),
                             sum(int(mask.sum()) < len(mask) for mask, _ in taken)))
    assert all(allowed == total for total, allowed, _ in counts), counts
    assert sum(total for total, _, _ in counts) >= 50 * comm.Get_size()
    assert all(restricted > 0 for _, _, restricted in counts)



@pytest.mark.parametrize("algorithm, phase", [
    # rank 0 has stored 49 transitions at step 60, rank 1 54: only rank 1's replay holds a 50-step window
    ("mamba", ["run.warmup_steps=60", "mamba.train_every=60", "mamba.sequence_length=50"]),
    # a PPO update every step: at the first step one marine is dead and the other alive, one rollout is empty
    ("ippo", ["run.warmup_steps=10", "ppo.rollout_steps=1"]),
], ids=["mamba", "ippo"])
def test_a_rank_with_less_data_still_joins_the_training_phase_of_the_others(tmp_path, algorithm, phase):
    """Serial pass: starts its own 2-rank job on SMAX 2m_vs_4m (seed 0), where agents leave episodes at different
    steps, so their ranks hold different amounts of data. A training phase must be one collective step for every
    rank (a rank that cannot train yet must still join the weight averaging), and the run end normally instead of
    its ranks waiting for each other until comm.timeout_s."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("jaxmarl") is None:
        pytest.skip("jaxmarl is not installed (make install)")
    root = Path(__file__).resolve().parents[1]
    overrides = [*TINY, f"run.algorithm={algorithm}", "env.world=smax", "env.scenario=2m_vs_4m",
                 "env.episode_length=30", "comm.topology=complete", "comm.timeout_s=30", "run.train_steps=60",
                 "run.eval_every=60", "run.eval_episodes=1", "run.baseline_draws=1", "run.checkpoint_every=0", *phase]
    command = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", sys.executable, "-m", "odmar_mpi.run",
               "--out", str(tmp_path / "run")]
    for item in overrides:
        command += ["--set", item]
    job = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # its own process group: a stuck job is ended whole
    try:
        output = job.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output = job.communicate()[0]
    assert job.returncode == 0, output[-3000:]
