"""MAMBA one rank per agent, over real MPI ranks (CI: 2 and 4 ranks): the real Node and learner, a tiny model.

- Every rank's deterministic state h_t over an episode, computed from its own observations and its
  neighbours' messages, equals MAMBA's all-agent transition on a complete graph (tests/mamba_reference.py,
  written from the equations) to float32 round-off.
- The learner's own weight averaging on a complete graph with uniform weights: after plain SGD steps it is
  one model stepped on the mean gradient; after the shipped Adam step it is the mean of the ranks' Adam
  steps, with each rank's moments its own. On a ring the ranks' disagreement shrinks geometrically.
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


def filled(learner, rank: int, rows: int = 60) -> None:
    """Rows of this rank's own (random) data in the learner's replay: each rank's gradient differs."""
    rng = np.random.default_rng(100 + rank)
    c, h = learner.model_config.n_categoricals, learner.model_config.deterministic
    for t in range(rows):
        learner.buffer.add(rng.normal(size=learner.model.obs_dim), int(rng.integers(5)), float(rng.normal()), False,
                           t % 12 == 0, rng.integers(5, size=learner.slots),
                           rng.integers(learner.model_config.n_classes, size=(learner.slots, c)),
                           rng.normal(size=(learner.slots, h)), np.ones(learner.slots, dtype=bool))


def model_gradient(learner) -> torch.Tensor:
    """The world model's loss gradient on one replayed batch of this rank's data, flattened (float64)."""
    batch = learner.buffer.sample(learner.settings.batch_size, learner.settings.sequence_length)
    learner.model.train()
    learner.model.zero_grad(set_to_none=True)
    learner.model.loss(batch, learner.graph, learner.generator)["total"].backward()
    learner.model.eval()
    return torch.cat([p.grad.reshape(-1) for p in learner.model.parameters()]).double()


def model_vector(learner) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(learner.model.parameters()).detach().double().numpy()


@pytest.mark.mpi(min_size=2)
def test_the_learners_averaging_after_sgd_steps_is_one_model_stepped_on_the_mean_gradient(comm, tmp_path):
    """D-PSGD on a complete graph with uniform weights (every entry of W is 1/n): each rank steps on its own batch,
    then the learner's own averaging; the ranks then hold one shared model stepped on the mean gradient."""
    lr = 0.05
    node = make_node(comm, "complete", tmp_path)
    learner = node.learner
    filled(learner, comm.Get_rank())
    start = model_vector(learner)
    gradient = model_gradient(learner)
    torch.optim.SGD(learner.model.parameters(), lr=lr).step()
    stepped = model_vector(learner)
    learner.average_weights(node.gossip, step=1)
    averaged = model_vector(learner)
    node.free()
    starts, gradients, everyone = comm.allgather(start), comm.allgather(gradient.numpy()), comm.allgather(averaged)
    shared = start - lr * np.mean(gradients, axis=0)  # one model, the mean gradient, in float64
    for other in starts:
        np.testing.assert_array_equal(other, start)  # one shared initial model
    assert np.abs(stepped - shared).max() > 1e-4  # a rank's own step is not the shared one ...
    np.testing.assert_allclose(averaged, shared, rtol=0, atol=4e-7)  # ... the average is: float32 round-off
    for other in everyone:
        np.testing.assert_allclose(other, averaged, rtol=0, atol=1e-7)


@pytest.mark.mpi(min_size=2)
def test_with_adam_the_average_is_the_mean_of_the_ranks_adam_steps_and_the_moments_stay_local(comm, tmp_path):
    """The shipped optimiser (Adam, moments kept by each rank): averaging the weights after one Adam step gives
    the mean of the ranks' own Adam steps, which is not Adam on the mean gradient (Adam's step is not linear in
    the gradient), and every rank keeps its own moments, so their next steps differ in scale too."""
    node = make_node(comm, "complete", tmp_path)
    learner = node.learner
    filled(learner, comm.Get_rank())
    start = model_vector(learner)
    gradient = model_gradient(learner)
    learner.model_optimizer.step()
    stepped = model_vector(learner)
    learner.average_weights(node.gossip, step=1)
    averaged = model_vector(learner)
    moments = torch.cat([state["exp_avg_sq"].reshape(-1) for state in learner.model_optimizer.state.values()])
    node.free()
    everyone_stepped, gradients = comm.allgather(stepped), comm.allgather(gradient.numpy())
    everyone_moments = comm.allgather(moments.double().numpy())
    np.testing.assert_allclose(averaged, np.mean(everyone_stepped, axis=0), rtol=0, atol=1e-7)
    lr, eps = learner.model_config.lr, 1e-8
    mean_gradient = np.mean(gradients, axis=0)
    shared_adam = start - lr * mean_gradient / (np.abs(mean_gradient) + eps)  # Adam's first step on the mean gradient
    gap = np.abs(averaged - shared_adam)
    assert gap.max() > 0.5 * lr  # where the ranks' gradients disagree in sign, the steps cancel
    assert gap.max() <= 2 * lr + 1e-6  # but no coordinate moves by more than Adam's step bound
    assert np.abs(everyone_moments[0] - everyone_moments[1]).max() > 0  # moments: each rank's own gradient


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


@pytest.mark.mpi(min_size=2)
def test_reward_scale_multiplies_what_the_learner_learns_from_and_nothing_reported(comm, tmp_path):
    """The same seed with env.reward_scale 1 and 10: the learner receives exactly 10 times the rewards, while the
    evaluations' team returns (the world's own units) are the same."""
    runs = []
    for scale in (1.0, 10.0):
        node = make_node(comm, "complete", tmp_path / f"scale{scale}",
                         ("run.warmup_steps=24", "run.train_steps=0", "run.eval_episodes=1", "run.checkpoint_every=0",
                          f"env.reward_scale={scale}", "run.algorithm=ippo"))
        learned = []
        observe = node.learner.observe
        node.learner.observe = lambda transition: learned.append(transition.reward) or observe(transition)
        node.train()
        runs.append((np.array(learned), node.telemetry.records.column("eval", "team_return")))
        node.free()
    (plain, plain_eval), (scaled, scaled_eval) = runs
    assert len(plain) >= 12 and np.abs(plain).max() > 0
    np.testing.assert_array_equal(scaled, 10.0 * plain)
    np.testing.assert_array_equal(scaled_eval, plain_eval)
