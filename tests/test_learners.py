"""Learners through their interface, without MPI: the gossip handle is a stand-in that returns chosen sums."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from odmar_mpi.comm.consensus import ConsensusResult
from odmar_mpi.config import load_config
from odmar_mpi.device import training_precision
from odmar_mpi.learners import ALGORITHMS, DISCRETE_ACTIONS, learner_class
from odmar_mpi.learners.base import MODES, LearnerContext, Transition
from odmar_mpi.records import Records
from odmar_mpi.streams import stream_seed
from odmar_mpi.worlds import make_world

TINY = ["model.num_inducing=16", "model.rollout_batch=8", "model.update_every=10", "sac.hidden=[16, 16]",
        "sac.batch_size=8", "sac.updates_per_step=1", "sac.buffer_size=1000", "run.warmup_steps=8",
        "world_model.deterministic=8", "world_model.n_categoricals=2", "world_model.n_classes=4",
        "world_model.hidden=8", "world_model.embed=8", "world_model.model_hidden=8", "world_model.head_hidden=8",
        "world_model.comm_heads=2", "world_model.horizon=3", "mamba.batch_size=2", "mamba.sequence_length=5",
        "mamba.buffer_size=200", "ppo.actor_hidden=8", "ppo.critic_hidden=8", "ppo.critic_heads=2",
        "ppo.minibatch_size=16"]


class SumOfOne:
    """A gossip handle for a single agent (sums, averages and mixes are the agent's own), or one whose sum
    is a chosen vector instead."""

    def __init__(self, replace: np.ndarray | None = None) -> None:
        self.replace = replace

    def sum(self, x: np.ndarray, **_) -> ConsensusResult:
        return ConsensusResult((x if self.replace is None else self.replace).copy(), 1, [0.0, 0.0])

    def average(self, x: np.ndarray, **_) -> ConsensusResult:
        return ConsensusResult(x.copy(), 0, [])

    def mix(self, x: np.ndarray, rounds: int = 1) -> ConsensusResult:
        return ConsensusResult(x.copy(), rounds, [0.0] * rounds)


def make_learner(algorithm: str, overrides: list[str] = (), device: torch.device = torch.device("cpu")):
    world_name = "simple_spread" if DISCRETE_ACTIONS[algorithm] else "reward-collection"
    cfg = load_config(None, TINY + [f"run.algorithm={algorithm}", f"env.world={world_name}", *overrides])
    world = make_world(cfg, rank=0, n_agents=1)
    cls = learner_class(algorithm)
    records = Records(cls.tables)
    ctx = LearnerContext(cfg=cfg, world=world, rank=0, n_agents=1, graph=cfg.comm.graph(1, 0), device=device,
                         seed=lambda stream: stream_seed(cfg.run.seed, 0, stream), records=records,
                         clock=lambda phase: nullcontext())
    return cls(ctx), world, records


def feed(learner, world, steps: int) -> None:
    """`steps` warm-up steps of a single agent (its own action is the whole joint action)."""
    obs = world.reset()
    learner.begin_episode("warmup")
    for _ in range(steps):
        action = learner.act(obs, "warmup")
        next_obs, reward, terminated, truncated = world.step(action, np.atleast_1d(action).reshape(1, -1))
        learner.observe(Transition(obs, action, reward, next_obs, terminated, truncated))
        obs = world.reset() if terminated or truncated else next_obs
        if terminated or truncated:
            learner.begin_episode("warmup")


def test_every_registered_algorithm_builds_and_acts():
    for algorithm in ALGORITHMS:
        learner, world, _ = make_learner(algorithm)
        for mode in MODES:
            action = learner.act(world.reset(), mode)
            if world.discrete:
                assert action.shape == () and 0 <= int(action) < world.n_actions
            else:
                assert action.shape == (2,) and np.all(np.abs(action) <= 1)


def test_a_posterior_that_cannot_be_formed_keeps_the_previous_one_and_is_recorded(capsys):
    learner, world, records = make_learner("odmar")
    feed(learner, world, 60)
    learner.model_step(10, SumOfOne())
    probe = torch.as_tensor(np.array([[1.0, 2.0, 0.5, -0.5], [-3.0, 4.0, 0.0, 1.0]]), dtype=torch.float64)
    before = learner.model.predict(probe)
    imagined_before = len(learner.imagined)
    kept_statistics = learner.posterior_statistics.copy()
    # Statistics whose precision I + Jw is far from positive definite: no jitter rescues the Cholesky.
    broken = learner.model.pack_statistics().copy()
    broken[: learner.model.num_inducing] = -1e6
    learner.model_step(20, SumOfOne(replace=broken))
    after = learner.model.predict(probe)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # the previous posterior, unchanged
    assert np.array_equal(learner.posterior_statistics, kept_statistics)  # what a resume refits from
    failed = records.column("model", "posterior_failed")
    assert failed.tolist() == [0.0, 1.0]
    assert "the model posterior could not be formed" in capsys.readouterr().err
    assert len(learner.imagined) > imagined_before  # training goes on: it still imagines with the kept posterior
    learner.update(21)


def test_a_first_posterior_failure_skips_imagination_and_training_goes_on():
    learner, world, records = make_learner("odmar")
    feed(learner, world, 30)
    broken = learner.model.pack_statistics().copy()
    broken[: learner.model.num_inducing] = -1e6
    learner.model_step(10, SumOfOne(replace=broken))
    assert not learner.model.has_posterior and len(learner.imagined) == 0
    assert records.column("model", "posterior_failed").tolist() == [1.0]
    learner.update(11)  # real data only, no error


def test_uniform_imagination_starts_cover_the_world_and_the_rest_come_from_the_buffer():
    half, world, _ = make_learner("odmar", ["model.uniform_starts=0.5"])
    feed(half, world, 40)
    starts = half.imagination_starts().numpy()
    assert starts.shape == (8, world.obs_dim)
    stored = half.real.sample(1000).obs.numpy()
    assert all((row == stored).all(1).any() for row in starts[:4])  # the first half: real states
    assert np.all(starts >= world.obs_low) and np.all(starts <= world.obs_high)
    uniform, world, _ = make_learner("odmar", ["model.uniform_starts=1", "model.rollout_batch=4000"])
    spread = uniform.imagination_starts().numpy()  # no real data needed at all
    assert np.all(spread >= world.obs_low) and np.all(spread <= world.obs_high)
    np.testing.assert_allclose(spread.mean(0), (world.obs_low + world.obs_high) / 2, atol=0.3)
    np.testing.assert_allclose(spread.std(0), (world.obs_high - world.obs_low) / np.sqrt(12), rtol=0.05)


def test_hold_floor_is_the_discounted_return_of_holding_still_in_the_world():
    """The floor `sac.hold_floor` puts under every TD target is what holding still for ever really earns:
    stepping the world with its hold action keeps the agent in place, collects the same reward every step,
    and sum_t gamma^t r_t + gamma^T floor(end) = floor(start); on a 1.0-site that is 1 / (1 - gamma)."""
    learner, world, _ = make_learner("odmar", ["sac.hold_floor=true", "sac.gamma=0.9"])
    floor = learner.sac.value_floor
    site = world.reward_fn.sites[np.argmax(world.reward_fn.values)]
    between = (world.reward_fn.sites[0] + world.reward_fn.sites[1]) / 2
    for position in (site, site + [0.3, -0.2], between, world.obs_low):
        world.reset()
        world.position[:] = position
        discounted, steps = 0.0, 50
        for t in range(steps):
            next_obs, reward, _, _ = world.step(world.hold_action)
            np.testing.assert_array_equal(next_obs, position)
            discounted += 0.9**t * reward
        value = floor(torch.tensor(np.array([position, next_obs]), dtype=torch.float64)).numpy()
        np.testing.assert_allclose(discounted + 0.9**steps * value[1], value[0], rtol=1e-12)
    assert float(floor(torch.tensor(site[None], dtype=torch.float32))) == pytest.approx(world.reward_fn.values.max() / 0.1)
    assert make_learner("odmar")[0].sac.value_floor is None


def test_hold_floor_refuses_a_world_without_a_hold_action():
    from odmar_mpi.learners.sac import hold_value

    with pytest.raises(ValueError, match="sac.hold_floor needs a world with an action that holds the agent"):
        hold_value(object(), 0.99)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_state_round_trip_continues_identically(algorithm):
    overrides = ["model.uniform_starts=0.5"]  # its stream is part of the state too
    first, world, _ = make_learner(algorithm, overrides)
    feed(first, world, 40)
    if first.model_every:
        first.model_step(10, SumOfOne())
    first.update(11)
    if world.coupled:
        first.act(world.reset(), "explore")  # a recurrent state and a pending step are part of the state too
    state = first.state_dict()
    second, world2, _ = make_learner(algorithm, overrides)
    second.load_state_dict(state)
    if algorithm == "odmar":
        assert torch.equal(first.imagination_starts(), second.imagination_starts())
    for learner in (first, second):
        learner.update(12)
    obs = world.reset()
    for mode in ("warmup", "explore", "evaluate"):  # same networks, random streams and recurrent state
        assert np.array_equal(first.act(obs, mode), second.act(obs, mode))


def test_ippo_divides_by_the_log_probability_an_action_had_when_it_was_taken():
    """On a graph of diameter D > 1 a transition completes D - 1 steps after it was acted, so the first ones of a
    rollout were chosen by the policy before the last update. Here D - 1 = 2: two actions are taken, the update
    runs on the earlier rollout, then their transitions arrive; the next update's ratio must divide by the
    log-probabilities under the policy that acted, not by the updated actor's (which is what recomputing gives)."""
    learner, world, _ = make_learner("ippo", ["ppo.rollout_steps=4", "ppo.epochs=4", "ppo.minibatch_size=4",
                                              "ppo.actor_lr=0.05"])
    obs = world.reset()
    learner.begin_episode("explore")
    taken = []

    def step(observe: bool = True):
        nonlocal obs
        action = learner.act(obs, "explore")
        next_obs, reward, terminated, truncated = world.step(action, np.atleast_1d(action).reshape(1, -1))
        taken.append((Transition(obs, action, 1.0 + reward, next_obs, terminated, truncated), learner.acted[-1]))
        obs = next_obs
        if observe:
            learner.observe(taken[-1][0])

    for _ in range(4):
        step()
    step(observe=False), step(observe=False)  # acted, not yet complete (the gossip's D - 1 steps)
    learner.model_step(4, SumOfOne())  # the update and averaging: the actor changes
    batches = []
    update = learner.ppo.update
    learner.ppo.update = lambda batch, generator: batches.append(batch) or update(batch, generator)
    for transition, _ in taken[4:6]:  # now they complete
        learner.observe(transition)
    step(), step()
    learner.model_step(8, SumOfOne())
    old = batches[0].old_log_probs
    behaviour = torch.tensor([log_prob for _, log_prob in taken[4:]])
    torch.testing.assert_close(old, behaviour, rtol=0, atol=1e-6)
    x = torch.as_tensor(np.stack([t.obs for t, _ in taken[4:6]]), dtype=torch.float32)
    actions = torch.tensor([int(t.action) for t, _ in taken[4:6]])
    recomputed = learner.ppo.actor(x).log_softmax(-1).gather(-1, actions[:, None]).squeeze(-1)
    assert (recomputed - behaviour[:2]).abs().max() > 1e-3  # the updated actor would have given other values


def test_ippo_trains_on_none_of_warm_ups_random_actions():
    learner, world, _ = make_learner("ippo", ["ppo.rollout_steps=4"])
    feed(learner, world, 6)
    assert learner.rollout == [] and not learner.acted


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("algorithm", ["mamba", "ippo"])
def test_mamba_and_ippo_train_on_the_gpu_end_to_end(algorithm):
    """Parameters, replay, generators, imagination and PPO on cuda; a state round trip continues identically."""
    learner, world, records = make_learner(algorithm, ["run.device=cuda", "ppo.rollout_steps=10"],
                                           device=torch.device("cuda"))
    obs = world.reset()
    learner.begin_episode("explore")
    for step in range(1, 61):
        action = learner.act(obs, "explore" if step > 20 else "warmup")
        next_obs, reward, terminated, truncated = world.step(action, np.atleast_1d(action).reshape(1, -1))
        learner.observe(Transition(obs, action, reward, next_obs, terminated, truncated))
        obs = world.reset() if terminated or truncated else next_obs
        if step > 20 and step % 10 == 0:
            learner.model_step(step, SumOfOne())
    modules = [learner.ppo.actor, learner.ppo.critic] + ([learner.model] if algorithm == "mamba" else [])
    assert all(p.device.type == "cuda" for module in modules for p in module.parameters())
    assert learner.generator.device.type == "cuda"
    if algorithm == "mamba":
        assert learner.buffer.rows.storage.device.type == "cuda"
    table = "mamba" if algorithm == "mamba" else "ppo"
    assert len(records.rows[table]) >= 2 and np.isfinite(records.column(table, "policy_loss")).all()
    state = learner.state_dict()
    twin, _, _ = make_learner(algorithm, ["run.device=cuda", "ppo.rollout_steps=10"], device=torch.device("cuda"))
    twin.load_state_dict(state)
    for a, b in zip(learner.ppo.actor.parameters(), twin.ppo.actor.parameters()):
        assert torch.equal(a, b)
    assert learner.act(obs, "explore") == twin.act(obs, "explore")



def test_bfloat16_forwards_after_an_optimiser_step_use_the_stepped_weights():
    """A training phase is one precision region with many optimiser steps: each forward must see the weights as
    they are then (autocast's cache of cast weights would hand it those of before the first step)."""
    layer = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with training_precision("bfloat16", torch.device("cpu")):
        before = layer(x)
        assert before.dtype == torch.bfloat16
        before.float().square().sum().backward()
        optimizer.step()
        after = layer(x)
    with torch.autocast("cpu", torch.bfloat16, cache_enabled=False):
        fresh = layer(x)  # the stepped weights, cast anew
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh)
    with training_precision("float32", torch.device("cpu")):
        assert layer(x).dtype == torch.float32
