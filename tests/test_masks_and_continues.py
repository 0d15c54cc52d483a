"""Action masks and predicted episode ends, serially: the actor's masks, the weights imagination gives PPO,
the world model's available-actions head, and the PettingZoo API of the built-in worlds through our factory.

- PPO with masks: sampling and acting never pick a masked action; log-probabilities and entropy are those of
  the categorical over the allowed logits alone (a hand-computed float64 softmax).
- Imagination's continue weights, through `MAMBALearner.train_policy`: a discount head that predicts "over"
  gives weight 1 at the first imagined step and 0 after it; one that predicts "goes on" gives 1 everywhere.
  Samples of weight 0 change neither the policy loss nor the value loss: the gradients with and without them
  are equal.
- The available-actions head: its loss term is there and falls on a fixed batch; imagination only acts among
  the actions it predicts available.
- SMAX 3m and Flatland tiny, built by `make_coupled_env` (the path a run takes), pass PettingZoo's
  parallel_api_test, and `CoupledWorld.play` plays an episode and returns the world's episode metric.

Tolerances: float32 module outputs against float64 hand computations agree to 1e-6 (a softmax over a few
O(1) logits: float32 spacing ~1e-7, a handful of operations); gradients of the same sums taken in another
order agree to 1e-6 relative.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from custom_world_example import CELLS
from env.coupled import CoupledWorld, make_coupled_env, random_action
from odmar_mpi.config import load_config
from odmar_mpi.learners.base import LearnerContext
from odmar_mpi.learners.mamba import MAMBALearner
from odmar_mpi.policy.ppo import PPO, UNAVAILABLE, Actor, PPOBatch, PPOConfig
from odmar_mpi.records import Records
from odmar_mpi.streams import stream_seed
from odmar_mpi.worlds import make_world

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; the machine's cores are shared

FLOAT32 = 1e-6  # float32 against float64 (module docstring)
PPO_TINY = PPOConfig(actor_hidden=16, critic_hidden=16, critic_heads=4, minibatch_size=64)
WORLD = "custom_world_example:make_world"  # tests/custom_world_example.py: masked actions, 3 of them
AGENTS = 3
HORIZON = 4
MAMBA_TINY = ["run.algorithm=mamba", f"env.world={WORLD}", "env.episode_length=10", "comm.topology=complete",
              "world_model.deterministic=16", "world_model.n_categoricals=4", "world_model.n_classes=4",
              "world_model.hidden=16", "world_model.embed=16", "world_model.model_hidden=16",
              "world_model.head_hidden=16", "world_model.comm_heads=4", f"world_model.horizon={HORIZON}",
              "world_model.comm_dropout=0.0", "world_model.lr=0.003", "mamba.batch_size=6",
              "mamba.sequence_length=8", "mamba.buffer_size=400", "ppo.actor_hidden=16", "ppo.critic_hidden=16",
              "ppo.critic_heads=4", "ppo.minibatch_size=100000", "ppo.epochs=1"]


# ---------------------------------------------------------------------------------------------- PPO with masks

def random_masks(rows: int, n_actions: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, n_actions) bool, each row with at least one available action."""
    masks = torch.rand(rows, n_actions, generator=generator) < 0.4
    masks[torch.arange(rows), torch.randint(0, n_actions, (rows,), generator=generator)] = True
    return masks


def preferring_masked_actions(n_actions: int, masked: list[int]) -> Actor:
    """An actor whose raw logits strongly prefer the actions `masked`: a mask that leaked would show at once."""
    actor = Actor(4, n_actions, PPO_TINY, seed=0)
    with torch.no_grad():
        actor.net[-1].bias[masked] = 8.0
    return actor


def test_sampling_and_acting_never_pick_a_masked_action() -> None:
    g = torch.Generator().manual_seed(0)
    n_actions = 6
    actor = preferring_masked_actions(n_actions, [0, 2, 5])
    features = torch.randn(4000, 4, generator=g)
    masks = random_masks(4000, n_actions, g)
    actions = actor.sample(features, g, masks)
    assert masks.gather(1, actions.unsqueeze(1)).all()
    for row in range(400):
        for greedy in (False, True):
            action, _ = actor.act(features[row:row + 1], g, greedy, masks[row:row + 1])
            assert masks[row, action], (row, greedy)
    # without the mask the same actor takes the masked actions it prefers: the masks above did the work
    free = actor.sample(features, g)
    assert not masks.gather(1, free.unsqueeze(1)).all()


def test_sampled_frequencies_are_the_softmax_over_the_allowed_logits() -> None:
    g = torch.Generator().manual_seed(1)
    actor = preferring_masked_actions(5, [1, 3])
    feature = torch.randn(1, 4, generator=g)
    mask = torch.tensor([[True, False, True, False, True]])
    draws = 40000
    actions = actor.sample(feature.expand(draws, 4), g, mask.expand(draws, 5))
    allowed = actor.net(feature)[0, mask[0]].double().softmax(-1)
    frequencies = torch.bincount(actions, minlength=5).double() / draws
    assert frequencies[~mask[0]].sum() == 0
    # 5 standard errors of a frequency: a chance failure has probability < 1e-6
    spread = 5 * (allowed * (1 - allowed) / draws).sqrt()
    assert ((frequencies[mask[0]] - allowed).abs() <= spread).all(), (frequencies, allowed)


def test_log_probabilities_and_entropy_are_over_the_available_actions() -> None:
    g = torch.Generator().manual_seed(2)
    n_actions, rows = 7, 50
    ppo = PPO(4, n_actions, PPOConfig(**{**PPO_TINY.__dict__, "epochs": 1, "minibatch_size": 1000}), seed=0)
    actor = ppo.actor
    features = torch.randn(rows, 4, generator=g)
    masks = random_masks(rows, n_actions, g)
    raw = actor.net(features).detach().double()
    log_probs = actor(features, masks).detach().log_softmax(-1)
    entropies = []
    for row in range(rows):
        hand = raw[row, masks[row]].log_softmax(-1)  # the categorical over the allowed logits alone
        torch.testing.assert_close(log_probs[row, masks[row]].double(), hand, atol=FLOAT32, rtol=0)
        assert (log_probs[row, ~masks[row]].exp() == 0).all()  # masked: probability exactly 0
        assert (actor(features, masks)[row, ~masks[row]] == UNAVAILABLE).all()
        entropies.append(float(-(hand.exp() * hand).sum()))
        # act gives the action's log-probability under the masked policy
        action, log_prob = actor.act(features[row:row + 1], g, False, masks[row:row + 1])
        allowed = masks[row].nonzero()[:, 0]
        assert abs(log_prob - float(hand[(allowed == action).nonzero()[0, 0]])) < FLOAT32
    # the entropy PPO maximises (its first minibatch, before the step) is the mean entropy over the allowed actions;
    # the batch's behaviour log-probabilities are the masked policy's
    actions = actor.sample(features, g, masks)
    batch = ppo.make_batch(features[None, :, None].expand(2, rows, 1, 4), torch.ones(rows, 1, dtype=torch.bool),
                           actions[None], torch.zeros(1, rows), torch.zeros(1, rows), available=masks[None])
    torch.testing.assert_close(batch.old_log_probs.double(), log_probs.double().gather(1, actions[:, None])[:, 0],
                               atol=FLOAT32, rtol=0)
    stats = ppo.update(batch, g)
    assert abs(stats["entropy"] - np.mean(entropies)) < FLOAT32


# ---------------------------------------------------------------------------------------- MAMBA's learner

def mamba_learner(overrides: tuple[str, ...] = ()) -> MAMBALearner:
    """Rank 0's MAMBA learner of a 3-agent complete graph on the example world (masked actions), no MPI: its replay
    holds real steps of the world (random allowed actions) with random neighbour messages."""
    cfg = load_config(None, [*MAMBA_TINY, *overrides])
    world = make_world(cfg, rank=0, n_agents=AGENTS)
    ctx = LearnerContext(cfg=cfg, world=world, rank=0, n_agents=AGENTS, graph=cfg.comm.graph(AGENTS, cfg.run.seed),
                         device=torch.device("cpu"), seed=lambda stream: stream_seed(cfg.run.seed, 0, stream),
                         records=Records(MAMBALearner.tables), clock=lambda phase: nullcontext())
    learner = MAMBALearner(ctx)
    assert learner.masked and learner.model.available is not None and learner.slots == AGENTS - 1
    rng = np.random.default_rng(0)
    model = learner.model_config
    for episode in range(12):
        world.episode = episode
        obs, first = world.reset(), True
        while not world.episode_over:
            available = world.available_actions()
            action = random_action(rng, world.n_actions, available)
            joint = np.array([[action], *([random_action(rng, 3, None)] for _ in range(AGENTS - 1))])
            next_obs, reward, terminated, _ = world.step(action, joint)
            learner.buffer.add(obs, action, reward, terminated, first, rng.integers(3, size=AGENTS - 1),
                               rng.integers(model.n_classes, size=(AGENTS - 1, model.n_categoricals)),
                               rng.normal(size=(AGENTS - 1, model.deterministic)), np.ones(AGENTS - 1, bool),
                               available)
            obs, first = next_obs, False
    return learner


def captured_ppo_batch(learner: MAMBALearner) -> PPOBatch:
    """The PPOBatch `train_policy` builds (it still runs its update)."""
    batches = []
    update = learner.ppo.update

    def capture(batch: PPOBatch, generator: torch.Generator) -> dict[str, float]:
        batches.append(batch)
        return update(batch, generator)

    learner.ppo.update = capture
    learner.train_policy(step=1)
    learner.ppo.update = update
    return batches[0]


def set_last_bias(head: torch.nn.Sequential, bias: list[float]) -> None:
    with torch.no_grad():
        head[-1].bias.copy_(torch.tensor(bias))


@pytest.mark.parametrize("bias, expected", [(-1e4, "over"), (1e4, "goes on")])
def test_imagined_samples_weigh_the_predicted_probability_that_the_episode_goes_on(bias: float, expected: str) -> None:
    learner = mamba_learner()
    set_last_bias(learner.model.discount, [bias])  # sigmoid(-1e4) = 0 and sigmoid(1e4) = 1 in float32
    batch = captured_ppo_batch(learner)
    weights = batch.weights.view(HORIZON, -1)  # (H, starts): train_policy flattens time first
    assert weights.shape[1] == learner.settings.batch_size * learner.settings.sequence_length
    assert (weights[0] == 1).all()  # the first imagined action is always taken
    if expected == "over":
        assert (weights[1:] == 0).all()
    else:
        assert (weights[1:] > 1 - 1e-6).all()


def capture_gradients(ppo: PPO, batch: PPOBatch) -> list[torch.Tensor]:
    """The actor's and the critic's loss gradients (flattened, in this order) of PPO.update's one minibatch; the
    weights are left as they were."""
    gradients = []

    def step(optimizer: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor) -> None:
        module.zero_grad(set_to_none=True)
        loss.backward()
        gradients.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                    for p in module.parameters()]))

    ppo._step = step  # instead of Adam's step: the gradient of each loss
    entropy_coef = ppo.entropy_coef  # update decays it; the next call must see the same
    ppo.update(batch, torch.Generator().manual_seed(0))
    del ppo._step
    ppo.entropy_coef = entropy_coef
    assert len(gradients) == 2
    return gradients


def only(batch: PPOBatch, keep: torch.Tensor) -> PPOBatch:
    return PPOBatch(*(None if field is None else field[keep] for field in batch))


def assert_same_gradients(with_zeros: list[torch.Tensor], without: list[torch.Tensor]) -> None:
    for name, a, b in zip(("policy (actor)", "value (critic)"), with_zeros, without):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=FLOAT32, atol=FLOAT32 * float(b.abs().max()), msg=name)


def test_samples_of_weight_zero_change_neither_the_policy_nor_the_value_gradient() -> None:
    """PPO.update on a batch as train_policy builds it (an episode predicted over after the first step), with
    and without its samples of weight 0."""
    learner = mamba_learner(("mamba.batch_size=2",))
    set_last_bias(learner.model.discount, [-1e4])
    batch = captured_ppo_batch(learner)
    keep = batch.weights > 0
    assert 0 < int(keep.sum()) < len(keep)
    assert_same_gradients(capture_gradients(learner.ppo, batch), capture_gradients(learner.ppo, only(batch, keep)))


def test_samples_after_a_predicted_end_do_not_change_the_advantages_before_it() -> None:
    """make_batch on imagined trajectories whose episode is predicted over after the first step (continue 0, so
    weight 0 from the second step on) against make_batch on their first step alone: the samples of weight 1 are
    the same, with the same returns, so their advantages and the gradients must be too."""
    g = torch.Generator().manual_seed(3)
    steps, starts, members, width = 5, 40, 3, 6
    ppo = PPO(width, 4, PPOConfig(**{**PPO_TINY.__dict__, "epochs": 1, "minibatch_size": 10000}), seed=0)
    features = torch.randn(steps + 1, starts, members, width, generator=g)
    valid = torch.ones(starts, members, dtype=torch.bool)
    actions = torch.randint(0, 4, (steps, starts), generator=g)
    rewards = torch.randn(steps, starts, generator=g)
    continues = torch.zeros(steps, starts)
    going = torch.cat([torch.ones(1, starts), continues[:-1].cumprod(0)])  # train_policy's weights
    full = ppo.make_batch(features, valid, actions, rewards, continues, weights=going)
    first = ppo.make_batch(features[:2], valid, actions[:1], rewards[:1], continues[:1], weights=going[:1])
    torch.testing.assert_close(full.returns[:starts], first.returns, atol=FLOAT32, rtol=0)  # nothing follows step 0
    torch.testing.assert_close(full.advantages[:starts], first.advantages, atol=FLOAT32, rtol=0)
    assert_same_gradients(capture_gradients(ppo, full), capture_gradients(ppo, first))


# ------------------------------------------------------------------------------ the available-actions head

def test_the_available_actions_head_is_trained_on_a_fixed_batch() -> None:
    learner = mamba_learner()
    model, settings = learner.model, learner.settings
    batch = learner.buffer.sample(settings.batch_size, settings.sequence_length)
    assert batch.available is not None and not batch.available.all()  # the line's ends forbid a move
    losses = [model.update(batch, learner.model_optimizer, learner.graph, learner.generator)["available_actions"]
              for _ in range(40)]
    assert losses[0] > 0
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def imagined(learner: MAMBALearner):
    """An imagination of the learner's neighbourhood, acting with its actor as train_policy does."""
    batch = learner.buffer.sample(learner.settings.batch_size, learner.settings.sequence_length)
    return learner.model.imagine(batch, lambda f, a: learner.ppo.actor.sample(f, learner.generator, a),
                                 learner.graph, learner.generator)


def test_imagination_acts_only_among_the_actions_the_model_predicts_available() -> None:
    learner = mamba_learner()
    # a head that predicts, everywhere: left and right available, stay not (sigmoid(-1e4) = 0 in float32)
    with torch.no_grad():
        learner.model.available[-1].weight.zero_()
    set_last_bias(learner.model.available, [1e4, -1e4, 1e4])
    with torch.no_grad():
        learner.ppo.actor.net[-1].bias.copy_(torch.tensor([0.0, 10.0, 0.0]))  # an actor that would rather stay
    out = imagined(learner)
    assert out.available.shape == (*out.actions.shape, 3)
    assert (out.available == torch.tensor([True, False, True])).all()
    assert (out.actions != 1).all() and set(out.actions.unique().tolist()) == {0, 2}  # every member, every step
    batch = captured_ppo_batch(learner)  # and the PPO batch carries the masks the actions were chosen under
    assert (batch.available == torch.tensor([True, False, True])).all() and (batch.actions != 1).all()


def test_imagined_actions_are_allowed_by_the_masks_drawn_from_a_trained_head() -> None:
    learner = mamba_learner()
    for _ in range(10):
        learner.train_model(step=1)
    out = imagined(learner)
    assert not out.available.all()  # the head forbids some actions somewhere
    assert out.available.gather(-1, out.actions.unsqueeze(-1)).all()
    assert out.available.any(-1).all()  # at least one action is always available


# ------------------------------------------------------------------------- built-in worlds via our factory

@pytest.mark.parametrize("world, scenario, metric, package", [("smax", "3m", "win", "jaxmarl"),
                                                               ("flatland", "tiny", "arrival", "flatland")])
def test_built_in_worlds_pass_the_parallel_api_test_and_play_an_episode(world: str, scenario: str, metric: str,
                                                                        package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (make install)")
    from pettingzoo.test import parallel_api_test

    parallel_api_test(make_coupled_env(world, 3, 0, scenario=scenario), num_cycles=100)
    copy = CoupledWorld(make_coupled_env(world, 3, 0, scenario=scenario), agent_index=1, seed=4)
    assert copy.masked and copy.metric_key == metric
    rng = np.random.default_rng(0)
    team, metrics = copy.play(0, lambda observations, masks: {
        agent: random_action(rng, copy.n_actions, masks.get(agent)) for agent in observations})
    assert copy.episode_over and np.isfinite(team)
    assert set(metrics) == {metric} and 0.0 <= metrics[metric] <= 1.0
    # the episode is the same when played again from its seed (the copies' promise)
    again = CoupledWorld(make_coupled_env(world, 3, 0, scenario=scenario), agent_index=2, seed=4)
    rng = np.random.default_rng(0)
    assert again.play(0, lambda observations, masks: {
        agent: random_action(rng, again.n_actions, masks.get(agent)) for agent in observations}) == (team, metrics)


def test_the_example_world_is_deterministic_given_its_seed() -> None:
    from custom_world_example import make_world as example

    a, b = example(3), example(3)
    for seed in (0, 1, 2):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        assert all(np.array_equal(obs_a[k], obs_b[k]) for k in obs_a)
        assert all(0 <= o.min() and o.max() <= 1 for o in obs_a.values())
        assert all(np.array_equal(info_a[k]["action_mask"], info_b[k]["action_mask"]) for k in info_a)
    first, other = a.reset(seed=0)[0], b.reset(seed=1)[0]
    assert any(not np.array_equal(first[k], other[k]) for k in first)  # the seed matters
    assert all(len(o) == 1 + 2 * 3 and np.all(o * (CELLS - 1) % 1 < 1e-5) for o in first.values())  # cells, scaled
