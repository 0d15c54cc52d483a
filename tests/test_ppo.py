"""PPO (shared by MAMBA and IPPO) against closed forms and a bandit; IPPO's time-limit bootstrap; the sequence
replay's windows and state.

Tolerances: closed forms in float64 agree to 1e-12 (a handful of operations on O(1) numbers); float32
module outputs compared with themselves must be bit-identical.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from odmar_mpi.learners.base import Transition
from odmar_mpi.learners.ippo import truncation_bootstrapped_rewards
from odmar_mpi.policy.ppo import PPO, Critic, PPOConfig, clipped_policy_loss, lambda_returns
from odmar_mpi.policy.sequences import SequenceBuffer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; the machine's cores are shared


TINY = PPOConfig(actor_hidden=16, critic_hidden=16, critic_heads=4, minibatch_size=64)


def test_lambda_returns_by_hand() -> None:
    r = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    v = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    d = torch.tensor([0.9, 0.8, 0.0], dtype=torch.float64)
    lam = 0.5
    r2 = 3.0 + 0.0 * (0.5 * 2.0 + 0.5 * 2.0)  # R_3 = v_3 = 2 is cut by d_2 = 0
    r1 = 2.0 + 0.8 * (0.5 * 1.5 + 0.5 * r2)
    r0 = 1.0 + 0.9 * (0.5 * 1.0 + 0.5 * r1)
    torch.testing.assert_close(lambda_returns(r, v, d, lam), torch.tensor([r0, r1, r2], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    d = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    discounted = [1 + 0.9 * (2 + 0.8 * (3 + 0.7 * 2.0)), 2 + 0.8 * (3 + 0.7 * 2.0), 3 + 0.7 * 2.0]
    torch.testing.assert_close(lambda_returns(r, v, d, 1.0), torch.tensor(discounted, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(lambda_returns(r, v, d, 0.0), r + d * v[1:], atol=1e-12, rtol=0)


def test_lambda_returns_keep_batch_dimensions() -> None:
    g = torch.Generator().manual_seed(0)
    r, v, d = torch.rand(5, 3, 2, generator=g), torch.rand(6, 3, 2, generator=g), torch.rand(5, 3, 2, generator=g)
    column = lambda_returns(r[:, 1, 0], v[:, 1, 0], d[:, 1, 0], 0.95)
    assert torch.equal(lambda_returns(r, v, d, 0.95)[:, 1, 0], column)


def test_clipped_objective_by_hand() -> None:
    new = torch.log(torch.tensor([0.5, 0.3, 0.9, 0.2], dtype=torch.float64))
    old = torch.log(torch.tensor([0.25, 0.3, 0.6, 0.4], dtype=torch.float64))
    advantages = torch.tensor([1.0, -2.0, -1.0, 3.0], dtype=torch.float64)
    # ratios 2, 1, 1.5, 0.5; clip 0.2 -> terms min(2, 1.2) = 1.2; -2; min(-1.5, -1.2) = -1.5; min(1.5, 2.4) = 1.5
    expected = -(1.2 - 2.0 - 1.5 + 1.5) / 4
    torch.testing.assert_close(clipped_policy_loss(new, old, advantages, 0.2),
                               torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def bandit_batch(ppo: PPO, samples: int, generator: torch.Generator):
    """One-step episodes from one state: action 1 pays 1, action 0 pays 0."""
    features = torch.ones(2, samples, 1, 3)
    actions = ppo.actor.sample(features[0, :, 0], generator).unsqueeze(0)
    rewards = (actions == 1).float()
    return ppo.make_batch(features, torch.ones(samples, 1, dtype=torch.bool), actions, rewards, torch.zeros(1, samples))


def test_ppo_learns_a_two_armed_bandit() -> None:
    ppo = PPO(3, 2, PPOConfig(**{**TINY.__dict__, "actor_lr": 3e-3, "critic_lr": 3e-3}), seed=0)
    g = torch.Generator().manual_seed(1)
    probability = lambda: float(ppo.actor(torch.ones(3)).softmax(-1)[1].detach())  # noqa: E731
    start = probability()
    for _ in range(8):
        stats = ppo.update(bandit_batch(ppo, 128, g), g)
    assert start < 0.7 and probability() > 0.9
    assert stats["entropy_coef"] == pytest.approx(TINY.entropy_coef * TINY.entropy_decay ** (8 * 5 * 2), rel=1e-9)


def test_critic_ignores_invalid_members_and_reads_member_zero() -> None:
    critic = Critic(4, TINY, seed=0)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(5, 3, 4, generator=g)
    valid = torch.tensor([True, True, False])
    changed = features.clone()
    changed[:, 2] += 10.0
    assert torch.equal(critic(features, valid), critic(changed, valid))
    changed[:, 1] += 10.0
    assert not torch.equal(critic(features, valid), critic(changed, valid))


def test_update_is_deterministic_and_state_dict_resumes_exactly() -> None:
    def fresh() -> PPO:
        return PPO(3, 2, TINY, seed=0)

    a, b = fresh(), fresh()
    batch = bandit_batch(a, 100, torch.Generator().manual_seed(0))
    a.update(batch, torch.Generator().manual_seed(5))
    b.update(batch, torch.Generator().manual_seed(5))
    checkpoint = io.BytesIO()
    torch.save(a.state_dict(), checkpoint)  # a real round trip: optimiser state must not alias a's tensors
    checkpoint.seek(0)
    resumed = fresh()
    resumed.load_state_dict(torch.load(checkpoint))
    ga, gr = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    assert a.update(batch, ga) == resumed.update(batch, gr)
    for x, y, z in zip(a.actor.parameters(), resumed.actor.parameters(), b.actor.parameters()):
        assert torch.equal(x, y) and not torch.equal(x, z)


def test_make_batch_uses_member_zero_and_normalises_advantages() -> None:
    ppo = PPO(4, 3, TINY, seed=0)
    g = torch.Generator().manual_seed(0)
    horizon, starts, members = 4, 6, 3
    features = torch.randn(horizon + 1, starts, members, 4, generator=g)
    actions = torch.randint(0, 3, (horizon, starts), generator=g)
    batch = ppo.make_batch(features, torch.ones(starts, members, dtype=torch.bool), actions,
                           torch.randn(horizon, starts, generator=g), torch.ones(horizon, starts))
    assert batch.features.shape == (horizon * starts, 4)
    assert batch.critic_features.shape == (horizon * starts, members, 4)
    assert torch.equal(batch.features, features[:-1, :, 0].flatten(0, 1))
    assert abs(float(batch.advantages.mean())) < 1e-6 and abs(float(batch.advantages.std()) - 1) < 1e-3  # eps 1e-4
    log_probs = ppo.actor(batch.features).log_softmax(-1).gather(-1, batch.actions[:, None]).squeeze(-1)
    assert torch.equal(log_probs.detach(), batch.old_log_probs)


def filled_buffer(rows: int, capacity: int = 40, episode_length: int = 7) -> SequenceBuffer:
    """Rows whose observation records their global step index t, so windows can be checked."""
    buffer = SequenceBuffer(capacity, obs_dim=2, n_slots=2, n_categoricals=3, deterministic=4, seed=0)
    for t in range(rows):
        buffer.add([t, t % episode_length], t % 5, float(t), t % episode_length == episode_length - 1,
                   t % episode_length == 0, [t % 5, -1], [[t % 4] * 3, [-1] * 3], [[float(t)] * 4, [0.0] * 4],
                   [True, False])
    return buffer


@pytest.mark.parametrize("rows", [25, 40, 97])  # partly filled, exactly full, wrapped around
def test_sequence_buffer_samples_only_windows_of_stored_consecutive_steps(rows: int) -> None:
    buffer = filled_buffer(rows)
    batch = buffer.sample(200, 10)
    steps = batch.obs[..., 0]
    assert batch.obs.shape == (10, 200, 2) and batch.nb_latent.dtype == torch.long
    assert torch.equal(steps[1:] - steps[:-1], torch.ones(9, 200))  # consecutive, never across the write position
    assert steps.min() >= rows - 40 and steps.max() <= rows - 1  # only rows still stored
    assert torch.equal(batch.is_first, batch.obs[..., 1] == 0) and torch.equal(batch.reward, steps)
    assert torch.equal(batch.nb_h[..., 0, 0], steps) and not batch.nb_valid[..., 1].any()
    assert (steps[0] == rows - 10).any() and (steps[0] == max(rows - 40, 0)).any()  # both extreme starts occur
    with pytest.raises(ValueError, match="collect more steps"):
        filled_buffer(5).sample(1, 10)


def test_sequence_buffer_state_round_trip_is_exact() -> None:
    original = filled_buffer(57)
    original.sample(3, 5)  # advance the generator
    resumed = SequenceBuffer(40, obs_dim=2, n_slots=2, n_categoricals=3, deterministic=4, seed=99)
    resumed.load_state_dict(original.state_dict())
    for buffer in (original, resumed):
        buffer.add([57, 1], 2, 57.0, False, False, [1, -1], [[1] * 3, [-1] * 3], [[57.0] * 4, [0.0] * 4],
                   [True, False])
    for x, y in zip(original.sample(8, 6), resumed.sample(8, 6)):
        assert (x is None and y is None) or torch.equal(x, y)


def test_critic_is_member_zeros_row_of_a_transformer_encoder_layer() -> None:
    critic = Critic(4, TINY, seed=0)
    layer = torch.nn.TransformerEncoderLayer(TINY.critic_hidden, TINY.critic_heads, TINY.critic_hidden, dropout=0.0,
                                             batch_first=True)
    layer.self_attn.load_state_dict(critic.attention.state_dict())
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(layer, name).load_state_dict(getattr(critic, name).state_dict())
    g = torch.Generator().manual_seed(0)
    features = torch.randn(7, 3, 4, generator=g)
    valid = torch.tensor([True, True, False])
    x = torch.relu(critic.embed(features))
    expected = critic.head(torch.relu(layer(x, src_key_padding_mask=~valid.expand(7, 3))[:, 0])).squeeze(-1)
    torch.testing.assert_close(critic(features, valid), expected, atol=1e-6, rtol=0)  # float32 op order only


def test_time_limit_bootstraps_with_the_value_of_the_state_it_cut_off_and_termination_does_not() -> None:
    critic = Critic(2, TINY, seed=0)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(5, 2, generator=g).numpy()

    def step(i: int, terminated: bool = False, truncated: bool = False) -> Transition:
        return Transition(states[i], np.asarray(0), float(i + 1), states[i + 1], terminated, truncated)

    # go on, cut off by the time limit, terminated, terminated while the time limit also hit
    rollout = [step(0), step(1, truncated=True), step(2, terminated=True), step(3, terminated=True, truncated=True)]
    rewards = truncation_bootstrapped_rewards(rollout, critic, gamma=0.9)
    with torch.no_grad():
        cut_off = critic(torch.as_tensor(states[2])[None, None, None, :], torch.ones(1, 1, dtype=torch.bool))[0, 0]
    assert rewards[1] == pytest.approx(2.0 + 0.9 * float(cut_off), rel=1e-6)
    assert abs(float(cut_off)) > 1e-3  # the bootstrap is not a no-op
    assert rewards[[0, 2, 3]].tolist() == [1.0, 3.0, 4.0]
