"""MAMBA one rank per agent, over real MPI ranks (CI: 2 and 4 ranks): the real Node and learner, a tiny model.

- Every rank's deterministic state h_t over an episode, computed from its own observations and its
  neighbours' messages, equals MAMBA's all-agent transition on a complete graph (tests/mamba_reference.py,
  written from the equations) to float32 round-off.
- Averaging the weights on a complete graph with uniform weights equals parameter sharing with averaged
  gradients; on a ring the ranks' disagreement shrinks geometrically.
- The world copies of all ranks stay identical over an episode of random joint actions.

Collectives come before assertions, so a failure on one rank cannot leave the others waiting.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from mamba_reference import reference_transition
from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.comm.topology import build_graph
from odmar_mpi.comm.weights import mixing_matrix, second_largest_modulus
from odmar_mpi.config import load_config
from odmar_mpi.node import Node

pytest.importorskip("mpe2")

TINY = ["run.algorithm=mamba", "env.world=simple_spread", "env.episode_length=12", "env.reward_sharing=local",
        "comm.algorithm=finite-time", "comm.rounds=0", "comm.timeout_s=60", "world_model.deterministic=16",
        "world_model.n_categoricals=4", "world_model.n_classes=4", "world_model.hidden=16", "world_model.embed=16",
        "world_model.model_hidden=16", "world_model.head_hidden=16", "world_model.comm_heads=4",
        "world_model.comm_dropout=0.0", "mamba.batch_size=4", "mamba.sequence_length=6", "mamba.buffer_size=500",
        "ppo.actor_hidden=16", "ppo.critic_hidden=16", "ppo.critic_heads=4", "ppo.minibatch_size=64"]
ROUND_OFF = 2e-6  # float32, one transition from the same inputs (see tests/test_rssm.py)


def make_node(comm: MPI.Comm, topology: str, tmp_path, extra: tuple[str, ...] = ()) -> Node:
    cfg = load_config(None, [*TINY, f"comm.topology={topology}", *extra])
    return Node(cfg, comm, cfg.comm.graph(comm.Get_size(), cfg.run.seed), tmp_path)


@pytest.mark.mpi(min_size=2)
def test_every_ranks_h_equals_mambas_all_agent_transition_on_a_complete_graph(comm, tmp_path):
    node = make_node(comm, "complete", tmp_path)
    learner, n = node.learner, comm.Get_size()
    h, z, actions = [], [], []
    obs = node.obs
    for _ in range(node.cfg.env.episode_length):
        action = learner.act(obs, "warmup")
        copy = learner.copies["train"]
        h.append(copy.state.h[0].clone()), z.append(copy.state.z[0].clone()), actions.append(int(action))
        obs, _, _, _ = node.step_world(node.world, action, "warmup")
    node.free()
    everyone = comm.allgather((torch.stack(h), torch.stack(z), torch.tensor(actions)))  # per rank: (T, .)
    H = torch.stack([e[0] for e in everyone], 1)  # (T, n, H)
    Z = torch.stack([e[1] for e in everyone], 1)
    A = torch.stack([e[2] for e in everyone], 1)  # (T, n)
    m = learner.model
    with torch.no_grad():
        first = reference_transition(m, torch.zeros(1, n, H.shape[-1]), torch.full((1, n), -1), torch.zeros_like(Z[:1]))
        following = reference_transition(m, H[:-1], A[:-1], Z[:-1])  # h_t from every agent's state and action at t - 1
    np.testing.assert_allclose(H[0].numpy(), first[0].numpy(), atol=ROUND_OFF, rtol=0)
    np.testing.assert_allclose(H[1:].numpy(), following.numpy(), atol=ROUND_OFF, rtol=0)
    assert float((H[1:] - H[:-1]).abs().max()) > 1e-3  # the states move: the comparison is not of constants


@pytest.mark.mpi(min_size=2)
def test_the_world_copies_of_all_ranks_stay_identical_under_random_joint_actions(comm, tmp_path):
    node = make_node(comm, "ring", tmp_path)
    digests, observations = [node.world.digest()], []
    obs = node.obs
    for _ in range(node.cfg.env.episode_length):
        action = node.learner.act(obs, "warmup")
        obs, _, _, truncated = node.step_world(node.world, action, "warmup")
        digests.append(node.world.digest())
        observations.append(obs)
    node.free()
    everyone = comm.allgather(digests)
    assert truncated and len(set(digests)) == len(digests)  # the world moved every step, to the episode's end
    assert everyone == [digests] * comm.Get_size()
    # and each rank's learner saw its own agent's observation: the copies agree on it too
    own = comm.allgather([o.tolist() for o in observations])
    assert all(own[r] != own[0] for r in range(1, comm.Get_size()))


def sgd_step(weights: np.ndarray, gradient: np.ndarray, lr: float = 0.1) -> np.ndarray:
    return weights - lr * gradient


@pytest.mark.mpi(min_size=2)
def test_averaging_on_a_complete_graph_with_uniform_weights_is_parameter_sharing(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("complete", n)
    weights = mixing_matrix(graph, "max-degree")  # complete graph: every entry 1/n
    gossip = VectorGossip(comm, graph, weights, algorithm="finite-time", rounds=None, tol=None, timeout_s=30)
    rng = np.random.default_rng(7)
    theta = rng.normal(size=50)  # the same start on every rank (shared seed)
    gradients = rng.normal(size=(n, 50))  # rank r's gradient: row r
    mixed = gossip.mix(sgd_step(theta, gradients[rank])).value
    gossip.free()
    shared = sgd_step(theta, gradients.mean(0))  # one shared copy stepped with the averaged gradient
    np.testing.assert_allclose(mixed, shared, rtol=0, atol=1e-14)  # round-off of a sum of n terms


@pytest.mark.mpi(min_size=4)  # a ring of 3 is a complete graph: one round averages exactly
def test_on_a_ring_the_disagreement_shrinks_geometrically(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("ring", n)
    weights = mixing_matrix(graph)
    gossip = VectorGossip(comm, graph, weights, algorithm="finite-time", rounds=None, tol=None, timeout_s=30)
    x = np.random.default_rng(rank).normal(size=40)
    mean = np.mean(comm.allgather(x), axis=0)
    disagreement = []
    for _ in range(8):
        disagreement.append(comm.allreduce(float(np.linalg.norm(x - mean) ** 2)) ** 0.5)
        x = gossip.mix(x).value
    gossip.free()
    ratios = np.array(disagreement[1:]) / np.array(disagreement[:-1])
    assert np.all(ratios < 1)  # every averaging step brings the ranks closer
    assert np.all(ratios <= second_largest_modulus(weights) + 1e-12)  # at least at W's spectral rate
