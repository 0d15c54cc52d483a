"""MAMBA's world model, one rank per agent: the neighbour-restricted transition against MAMBA's all-agent
equations, masks, losses, KL balancing, flat parameters and determinism.

Tolerances: a float32 transition computed by the module and by the equations here differs only in the
order of float32 operations (fused GRU, batched matmuls, layer norm), so one step agrees to round-off:
h is O(1), float32's spacing there is 6e-8, and the ~6 chained operations of one step leave a few
spacings (4e-7 measured); ROUND_OFF = 2e-6 allows ~30. Each step is compared from the same inputs, so
errors do not accumulate. Closed forms evaluated in float64 agree to 1e-12.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from odmar_mpi.model.rssm import (NeighbourMessages, RSSMState, WorldModel, WorldModelConfig, attention_mask,
                                  kl_balanced, local_graph, position_encoding)
from odmar_mpi.policy.sequences import SequenceBuffer
from mamba_reference import reference_transition

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; the machine's cores are shared


CONFIG = WorldModelConfig(deterministic=32, n_categoricals=8, n_classes=8, hidden=32, embed=16, model_hidden=32,
                          comm_heads=8, head_hidden=32, horizon=3)
OBS_DIM, N_ACTIONS = 6, 5
ROUND_OFF = 2e-6  # float32, one transition (module docstring)


def model(seed: int = 0, **changes: object) -> WorldModel:
    config = WorldModelConfig(**{**CONFIG.__dict__, **changes})
    return WorldModel(config, OBS_DIM, N_ACTIONS, seed)


def complete(n: int) -> list[list[int]]:
    return [[j for j in range(n) if j != i] for i in range(n)]


def ring(n: int) -> list[list[int]]:
    return [[(i - 1) % n, (i + 1) % n] for i in range(n)]


def test_attention_layer_equals_torchs_transformer_encoder_layer() -> None:
    m = model()
    ours = m.rssm.comm.layers[0]
    theirs = torch.nn.TransformerEncoderLayer(CONFIG.model_hidden, CONFIG.comm_heads, CONFIG.model_hidden,
                                              dropout=0.0, batch_first=True)
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(ours.in_proj.weight)
        theirs.self_attn.in_proj_bias.copy_(ours.in_proj.bias)
        theirs.self_attn.out_proj.load_state_dict(ours.out_proj.state_dict())
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(theirs, name).load_state_dict(getattr(ours, name).state_dict())
    x = torch.randn(3, 4, CONFIG.model_hidden, generator=torch.Generator().manual_seed(1))
    attend = attention_mask(torch.ones(3, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool))
    theirs.train()  # the slow path: the same math as MAMBA's (torch's eval fast path fuses kernels)
    # one layer: a few float32 spacings
    torch.testing.assert_close(ours(x, attend, torch.Generator()), theirs(x), atol=1e-6, rtol=0)


def run_agents(m: WorldModel, neighbours: list[list[int]], steps: int, batch: int = 2):
    """The decentralised protocol: every agent steps its own RSSM (shared weights) with its own observation and
    the messages its neighbours sent the step before. Returns per agent h (T, B, H), z, actions (T, B) and
    the rows each agent would store (embeddings and messages received)."""
    n = len(neighbours)
    data = torch.Generator().manual_seed(5)
    embeds = torch.randn(n, steps, batch, CONFIG.embed, generator=data)
    actions = torch.randint(0, N_ACTIONS, (steps, batch, n), generator=data)
    graphs = [local_graph(i, neighbours[i], neighbours) for i in range(n)]
    generators = [torch.Generator().manual_seed(100 + i) for i in range(n)]
    h = torch.zeros(steps, batch, n, CONFIG.deterministic)
    z = torch.zeros(steps, batch, n, CONFIG.stochastic)
    state = [m.rssm.initial((batch,)) for _ in range(n)]
    with torch.no_grad():
        for t in range(steps):
            is_first = torch.full((batch,), t == 0)
            for i in range(n):
                slots = neighbours[i]
                sent = t - 1 if t > 0 else 0  # at t = 0 the messages are reset anyway
                messages = NeighbourMessages(actions[sent][:, slots] if t else torch.full((batch, len(slots)), -1),
                                             m.rssm.latent_indices(z[sent][:, slots]), h[sent][:, slots],
                                             torch.ones(batch, len(slots), dtype=torch.bool))
                previous_action = actions[t - 1, :, i] if t else torch.full((batch,), -1)
                state[i], _, _ = m.rssm.observe_step(state[i], previous_action, messages, embeds[i, t], is_first,
                                                     graphs[i], generators[i])
            h[t], z[t] = torch.stack([s.h for s in state], 1), torch.stack([s.z for s in state], 1)
    return SimpleNamespace(h=h, z=z, actions=actions, embeds=embeds, graphs=graphs)


def test_neighbour_transition_equals_mamba_all_agent_transition_on_a_complete_graph() -> None:
    m = model()
    n, steps = 4, 5
    run = run_agents(m, complete(n), steps)
    assert run.z.abs().sum() > 0 and not torch.equal(run.h[1], run.h[2])
    with torch.no_grad():
        h = torch.zeros_like(run.h[0])
        previous_actions = torch.full_like(run.actions[0], -1)
        previous_z = torch.zeros_like(run.z[0])
        for t in range(steps):
            h = reference_transition(m, h if t else torch.zeros_like(h), previous_actions, previous_z)
            torch.testing.assert_close(run.h[t], h, atol=ROUND_OFF, rtol=0)
            previous_actions, previous_z, h = run.actions[t], run.z[t], run.h[t]


def test_observe_over_a_recorded_sequence_reproduces_the_acting_steps() -> None:
    m = model()
    neighbours = ring(5)
    run = run_agents(m, neighbours, steps=5)
    agent, slots = 2, neighbours[2]
    steps, batch = run.actions.shape[:2]
    messages = NeighbourMessages(run.actions[..., slots], m.rssm.latent_indices(run.z[:, :, slots]), run.h[:, :, slots],
                                 torch.ones(steps, batch, len(slots), dtype=torch.bool))
    is_first = torch.zeros(steps, batch, dtype=torch.bool)
    with torch.no_grad():
        seen = m.rssm.observe(run.embeds[agent], run.actions[..., agent], is_first, messages, run.graphs[agent],
                              torch.Generator().manual_seed(100 + agent))
    assert torch.equal(m.rssm.latent_indices(seen.z), m.rssm.latent_indices(run.z[:, :, agent]))  # same samples
    torch.testing.assert_close(seen.h, run.h[:, :, agent], atol=ROUND_OFF, rtol=0)  # one step apart: round-off
    torch.testing.assert_close(seen.h_next[:-1], seen.h[1:], atol=ROUND_OFF, rtol=0)  # no reset inside: h_next = next h


def test_ring_mask_only_neighbours_influence_an_agent() -> None:
    m = model()
    n = 6
    graph = local_graph(0, list(range(1, n)), ring(n))  # all six agents as one set, attention along the ring
    g = torch.Generator().manual_seed(2)
    h = torch.randn(1, n, CONFIG.deterministic, generator=g)
    latent = torch.randint(0, CONFIG.n_classes, (1, n, CONFIG.n_categoricals), generator=g)
    actions = torch.randint(0, N_ACTIONS, (1, n), generator=g)
    attend = attention_mask(torch.ones(1, n, dtype=torch.bool), graph.adjacency)

    def next_h(latent: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return m.rssm.imagine_step(h, latent, acts, attend, m.rssm.comm.positions(graph.member_ids), g)[0][0]

    base = next_h(latent, actions)
    other_latent = latent.clone()
    other_latent[0, 3] = (latent[0, 3] + 1) % CONFIG.n_classes  # agent 3 is two hops from agent 0
    other_actions = actions.clone()
    other_actions[0, 3] = (actions[0, 3] + 1) % N_ACTIONS
    changed = next_h(other_latent, other_actions)
    assert torch.equal(changed[0], base[0])  # masked weights are exactly 0
    assert not torch.equal(changed[2], base[2]) and not torch.equal(changed[4], base[4])  # its neighbours see it
    neighbour_latent = latent.clone()
    neighbour_latent[0, 1] = (latent[0, 1] + 1) % CONFIG.n_classes
    assert not torch.equal(next_h(neighbour_latent, actions)[0], base[0])


def test_local_graph_keeps_only_edges_inside_the_neighbourhood() -> None:
    graph = local_graph(0, [5, 1, None], ring(6))  # agent 0 on a ring of six, one empty slot
    assert graph.member_ids.tolist() == [0, 5, 1, 0]
    assert graph.adjacency.tolist() == [[True, True, True, False], [True, True, False, False],
                                        [True, False, True, False], [False, False, False, False]]


def test_empty_neighbour_slots_are_ignored() -> None:
    m = model()
    g = torch.Generator().manual_seed(3)
    graph = local_graph(0, [1, 2], complete(3))  # slot 2 is adjacent: only its validity flag may hide it
    previous = m.rssm.initial((2,))
    embed = torch.randn(2, CONFIG.embed, generator=g)

    def step(latent_of_empty_slot: int) -> torch.Tensor:
        latent = torch.zeros(2, 2, CONFIG.n_categoricals, dtype=torch.long)
        latent[:, 1] = latent_of_empty_slot
        messages = NeighbourMessages(torch.tensor([[1, 2], [1, 2]]), latent, torch.zeros(2, 2, CONFIG.deterministic),
                                     torch.tensor([[True, False], [True, False]]))
        with torch.no_grad():
            return m.rssm.observe_step(previous, torch.tensor([0, 3]), messages, embed,
                                       torch.zeros(2, dtype=torch.bool), graph, torch.Generator().manual_seed(0))[0].h

    assert torch.equal(step(0), step(5))


def tiny_batch(steps: int = 6, batch: int = 4, slots: int = 2, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(steps, batch, dtype=torch.bool)
    is_first[3, 1] = True
    terminal = torch.zeros(steps, batch, dtype=torch.bool)
    terminal[2, 1] = True
    return SimpleNamespace(
        obs=torch.randn(steps, batch, OBS_DIM, generator=g),
        action=torch.randint(0, N_ACTIONS, (steps, batch), generator=g),
        reward=torch.randn(steps, batch, generator=g), terminal=terminal, is_first=is_first,
        nb_action=torch.randint(0, N_ACTIONS, (steps, batch, slots), generator=g),
        nb_latent=torch.randint(0, CONFIG.n_classes, (steps, batch, slots, CONFIG.n_categoricals), generator=g),
        nb_h=torch.randn(steps, batch, slots, CONFIG.deterministic, generator=g),
        nb_valid=torch.ones(steps, batch, slots, dtype=torch.bool))


TRIANGLE = local_graph(0, [1, 2], complete(3))


def random_policy(g: torch.Generator):
    """Uniform actions for every member of every start, drawn from g."""
    return lambda features, available: torch.randint(0, N_ACTIONS, features.shape[:-1], generator=g)


def test_episode_start_inside_a_window_restarts_from_the_zero_state() -> None:
    m = model()
    batch = tiny_batch()
    with torch.no_grad():
        seen = m.rssm.observe(m.encoder(batch.obs), batch.action, batch.is_first,
                              NeighbourMessages(batch.nb_action, batch.nb_latent, batch.nb_h, batch.nb_valid),
                              TRIANGLE, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen.h[3, 1], seen.h[0, 1], atol=ROUND_OFF, rtol=0)  # both: zero state, no inputs
    assert (seen.h_next[2, 1] - seen.h[3, 1]).abs().max() > 1e-3  # the row before still gets its continuation
    torch.testing.assert_close(seen.h_next[2, 0], seen.h[3, 0], atol=ROUND_OFF, rtol=0)


def test_losses_are_finite_and_decrease_on_a_fixed_batch() -> None:
    m = model(comm_dropout=0.0)
    batch = tiny_batch()
    optimizer = torch.optim.Adam(m.parameters(), lr=2e-3)
    totals = []
    for _ in range(25):
        stats = m.update(batch, optimizer, TRIANGLE, torch.Generator().manual_seed(0))
        assert all(math.isfinite(v) for v in stats.values())
        totals.append(stats["total"])
    assert set(stats) == {"reconstruction", "reward", "discount", "kl", "action_prediction", "total", "grad_norm"}
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5


def test_available_actions_head_is_optional_and_trained_when_present() -> None:
    m = WorldModel(CONFIG, OBS_DIM, N_ACTIONS, seed=0, available_actions=True)
    batch = tiny_batch()
    batch.available = torch.ones(6, 4, N_ACTIONS, dtype=torch.bool)
    terms = m.loss(batch, TRIANGLE, torch.Generator().manual_seed(0))
    assert terms["available_actions"] > 0 and "available_actions" not in model().loss(
        batch, TRIANGLE, torch.Generator().manual_seed(0))


def test_kl_balancing_matches_the_closed_form() -> None:
    g = torch.Generator().manual_seed(4)
    rows, c, k, balance = 3, 4, 5, 0.2
    q_logits = torch.randn(rows, c * k, generator=g, dtype=torch.float64, requires_grad=True)
    p_logits = torch.randn(rows, c * k, generator=g, dtype=torch.float64, requires_grad=True)
    loss = kl_balanced(q_logits, p_logits, k, balance)
    loss.backward()
    q = q_logits.detach().view(rows, c, k).softmax(-1)
    p = p_logits.detach().view(rows, c, k).softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1, keepdim=True)  # per categorical
    torch.testing.assert_close(loss.detach(), kl.mean(), atol=1e-12, rtol=0)
    # d KL / d posterior logits = q (log q - log p - KL); d KL / d prior logits = p - q; mean over rows * C
    torch.testing.assert_close(q_logits.grad.view(rows, c, k), balance * q * (q.log() - p.log() - kl) / (rows * c),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(p_logits.grad.view(rows, c, k), (1 - balance) * (p - q) / (rows * c), atol=1e-12, rtol=0)


def test_parameters_round_trip_through_one_float32_vector() -> None:
    a, b = model(seed=0), model(seed=1)
    vector = torch.nn.utils.parameters_to_vector(a.parameters())
    assert vector.dtype == torch.float32 and vector.numel() == sum(p.numel() for p in a.parameters())
    assert not torch.equal(vector, torch.nn.utils.parameters_to_vector(b.parameters()))
    torch.nn.utils.vector_to_parameters(vector.clone(), b.parameters())
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_same_seed_same_samples_and_the_global_rng_is_untouched() -> None:
    global_state = torch.get_rng_state()

    def run(seed: int) -> tuple[torch.Tensor, ...]:
        m = model(seed=0)
        g = torch.Generator().manual_seed(seed)
        m.update(tiny_batch(), m.make_optimizer(), TRIANGLE, g)  # dropout on: it draws from g as well
        imagined = m.imagine(tiny_batch(), random_policy(g), TRIANGLE, g)
        return imagined.features, imagined.rewards

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.get_rng_state(), global_state)


def test_imagination_on_a_complete_graph_follows_the_all_agent_equations() -> None:
    m = model()
    g = torch.Generator().manual_seed(9)
    imagined = m.imagine(tiny_batch(), random_policy(g), TRIANGLE, g)
    steps, n = CONFIG.horizon, 3
    assert imagined.features.shape == (steps + 1, 6 * 4, n, CONFIG.compact_features)
    assert imagined.rewards.shape == imagined.continues.shape == (steps, 6 * 4)
    latent, h = imagined.features.split([CONFIG.n_categoricals, CONFIG.deterministic], -1)
    assert torch.equal(latent, latent.round()) and latent.min() >= 0 and latent.max() < CONFIG.n_classes
    z = m.rssm.latents(latent.long())  # one-hot, for the equations
    with torch.no_grad():
        for t in range(steps):
            torch.testing.assert_close(h[t + 1], reference_transition(m, h[t], imagined.actions[t], z[t]),
                                       atol=ROUND_OFF, rtol=0)
        own = torch.cat([z[:-1, :, 0], h[1:, :, 0]], -1)  # reward reads [z_t, h_{t+1}] of member 0, one-hot here
        torch.testing.assert_close(imagined.rewards, m.reward(own).squeeze(-1), atol=ROUND_OFF, rtol=0)


def test_position_encoding_is_mambas_sinusoid_table() -> None:
    width = 6
    table = position_encoding(torch.arange(3), width)
    for pos in range(3):
        for j in range(width):
            angle = pos / 10000 ** (2 * (j // 2) / width)
            assert abs(float(table[pos, j]) - (math.sin(angle) if j % 2 == 0 else math.cos(angle))) < 1e-7


def test_world_model_reads_a_sampled_sequence_batch() -> None:
    buffer = SequenceBuffer(50, OBS_DIM, 2, CONFIG.n_categoricals, CONFIG.deterministic, seed=0)
    g = torch.Generator().manual_seed(0)
    for t in range(30):
        buffer.add(torch.randn(OBS_DIM, generator=g), t % N_ACTIONS, 0.5, False, t % 10 == 0, [1, 2],
                   torch.randint(0, CONFIG.n_classes, (2, CONFIG.n_categoricals), generator=g),
                   torch.randn(2, CONFIG.deterministic, generator=g), [True, True])
    terms = model().loss(buffer.sample(3, 8), TRIANGLE, torch.Generator().manual_seed(0))
    assert math.isfinite(float(terms["total"].detach()))


def test_categorical_samples_follow_the_softmax_and_pass_its_gradient() -> None:
    """Each categorical of z is drawn with the softmax's class frequencies (a sampler off by one class, or
    drawing one number for all categoricals, fails), as one-hot rows whose gradient is the probabilities'."""
    rssm = model().rssm
    c, k, n = CONFIG.n_categoricals, CONFIG.n_classes, 20000
    logits = torch.randn(c * k, generator=torch.Generator().manual_seed(1)) * 2
    samples = rssm.sample(logits.expand(n, -1), torch.Generator().manual_seed(2)).unflatten(-1, (c, k))
    samples = samples.detach().round()  # one-hot + (p - p): exact up to round-off
    assert torch.equal(samples.sum(-1), torch.ones(n, c))  # one-hot per categorical
    probs = logits.unflatten(-1, (c, k)).softmax(-1)
    torch.testing.assert_close(samples.mean(0), probs, atol=4 * math.sqrt(0.25 / n), rtol=0)
    # independent categoricals: one uniform number shared by all would make their classes comonotone
    classes = samples.argmax(-1).double()
    assert torch.corrcoef(classes[:, :2].T)[0, 1].abs() < 0.05
    leaf = logits.clone().requires_grad_(True)
    weights = torch.randn(c * k)
    (rssm.sample(leaf, torch.Generator().manual_seed(3)) * weights).sum().backward()
    reference = logits.clone().requires_grad_(True)
    (reference.unflatten(-1, (c, k)).softmax(-1).flatten() * weights).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad)
