"""The sparse-GP world model: inducing points, kernel, statistics, packing, posterior and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odmar_mpi.bench.gp import (DEFAULT_KERNEL, INPUT_HIGH, INPUT_LOW, WELL_CONDITIONED, gpytorch_agreement,
                                world_transitions)
from odmar_mpi.model import PosteriorError, SparseGP, inducing_points, pack, packed_size, unpack, world_model_kernel

NOISE_VAR = 0.01


def small_model(num_inducing: int = 200, chunk_size: int = 1024, rbf_only: bool = False) -> SparseGP:
    inducing = inducing_points(num_inducing, INPUT_LOW, INPUT_HIGH, seed=0)
    return SparseGP(inducing, world_model_kernel(rbf_only=rbf_only), NOISE_VAR, out_dim=2, chunk_size=chunk_size)


def relative_error(value: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    value, reference = torch.as_tensor(value), torch.as_tensor(reference)
    return float((value - reference).abs().max() / reference.abs().max())


def test_inducing_points_are_a_shared_scrambled_sobol_net_over_the_box():
    points = inducing_points(64, INPUT_LOW, INPUT_HIGH, seed=7)
    assert points.shape == (64, 4) and points.dtype == torch.float64
    assert torch.equal(points, inducing_points(64, INPUT_LOW, INPUT_HIGH, seed=7))  # every rank, no message
    assert not torch.equal(points, inducing_points(64, INPUT_LOW, INPUT_HIGH, seed=8))
    low, high = torch.tensor(INPUT_LOW), torch.tensor(INPUT_HIGH)
    unit = (points - low) / (high - low)
    assert bool(((unit >= 0) & (unit < 1)).all())
    # A (0, m, s)-net: 2^6 Sobol points put exactly one point in each of 64 equal slices of every axis.
    for axis in range(4):
        assert sorted(torch.floor(unit[:, axis] * 64).long().tolist()) == list(range(64))


def test_kernel_matches_its_closed_form():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    b = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    rbf = torch.exp(-torch.cdist(a, b).square() / (2 * 2.0**2))
    with torch.no_grad():
        default = world_model_kernel()(a, b).to_dense()
        rbf_only = world_model_kernel(lengthscale=2.0, rbf_only=True)(a, b).to_dense()
        no_linear = world_model_kernel(linear_variance=0.0, constant=0.3)(a, b).to_dense()
    # Round-off only (the squared distance is formed as |a|^2 + |b|^2 - 2 a.b).
    torch.testing.assert_close(default, rbf + a @ b.T + 0.1, rtol=0, atol=1e-12)
    torch.testing.assert_close(rbf_only, rbf, rtol=0, atol=1e-12)
    torch.testing.assert_close(no_linear, rbf + 0.3, rtol=0, atol=1e-12)


def test_pack_unpack_round_trips_exactly_in_upper_triangle_layout():
    generator = torch.Generator().manual_seed(1)
    M, d = 7, 2
    square = torch.randn(M, M, dtype=torch.float64, generator=generator)
    J, h = square + square.T, torch.randn(M, d, dtype=torch.float64, generator=generator)
    buffer = np.empty(packed_size(M, d))
    assert pack(J, h, out=buffer) is buffer
    assert buffer.size == M * (M + 1) // 2 + M * d
    np.testing.assert_array_equal(buffer[:M], J[0].numpy())  # row 0 of the upper triangle comes first
    np.testing.assert_array_equal(buffer[M:2 * M - 1], J[1, 1:].numpy())
    np.testing.assert_array_equal(buffer[-M * d:], h.reshape(-1).numpy())
    J_back, h_back = unpack(buffer, M, d, "cpu")
    assert torch.equal(J_back, J) and torch.equal(h_back, h) and torch.equal(J_back, J_back.T)
    with pytest.raises(ValueError, match="packed_size"):
        pack(J, h, out=np.empty(5))


def test_statistics_summed_over_agents_equal_all_data_at_once():
    x, y = world_transitions(300, seed=2)
    agents = [small_model() for _ in range(3)]
    for agent, rows in zip(agents, torch.arange(300).chunk(3)):
        agent.observe(x[rows], y[rows])
    together = small_model()
    together.observe(x, y)
    summed = sum(agent.pack_statistics() for agent in agents)
    # The same sums in another association: round-off only.
    assert relative_error(summed, together.pack_statistics()) < 1e-13
    assert sum(agent.num_observed for agent in agents) == together.num_observed == 300

    agents[0].fit(summed)
    together.fit_local()
    x_test, _ = world_transitions(50, seed=3)
    mean, variance = agents[0].predict(x_test)
    mean_all, variance_all = together.predict(x_test)
    # Round-off of the statistics, amplified by cond(I + Jw) (~1e6 here).
    assert relative_error(mean, mean_all) < 1e-9
    assert relative_error(variance, variance_all) < 1e-9


def test_one_transition_at_a_time_equals_a_batch_refit_and_keeps_j_symmetric():
    x, y = world_transitions(150, seed=4)
    stepwise = small_model(chunk_size=64)  # 150 = two flushed chunks + 22 still buffered at pack time
    for row in range(150):
        stepwise.observe(x[row:row + 1].numpy(), y[row:row + 1].numpy())  # the node's call: numpy rows
    batch = small_model()
    batch.observe(x, y)
    # Chunked vs one rank-150 update: round-off only.
    assert relative_error(stepwise.pack_statistics(), batch.pack_statistics()) < 1e-13
    assert torch.equal(stepwise.J, stepwise.J.T) and torch.equal(batch.J, batch.J.T)


def test_posterior_agrees_with_centralised_gpytorch_sgpr():
    well = gpytorch_agreement(WELL_CONDITIONED)
    # RBF only, inputs in [0, 1]^4, M = 100: conditioning allows near round-off agreement.
    assert well["max_abs_mean_diff"] <= 1e-8 and well["max_abs_var_diff"] <= 1e-8
    default = gpytorch_agreement(DEFAULT_KERNEL)
    # Default kernel on raw inputs, M = 1000: cond(Kzz) ~ 3e9 limits both sides' accuracy.
    assert default["rel_mean_diff"] <= 1e-5 and default["rel_var_diff"] <= 1e-5


def test_variance_shrinks_where_data_arrives():
    model = small_model()
    centre = torch.tensor([[3.0, -2.0, 0.5, -0.5]], dtype=torch.float64)
    nearby = centre + 0.3 * torch.randn(400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, targets = world_transitions(400, seed=5)
    variances, seen = [], 0
    for count in (10, 50, 400):
        model.observe(nearby[seen:count], targets[seen:count])
        seen = count
        model.fit_local()
        variances.append(float(model.predict(centre)[1]))
    with torch.no_grad():
        prior = float(model.kernel(centre, diag=True))
    # The original's k - K Sigma K grows with data; the DTC variance must fall, far below the prior (14.6).
    assert variances[0] > variances[1] > variances[2] and variances[2] < 1e-3 * prior


def test_variance_stays_at_the_prior_far_from_data():
    model = small_model(rbf_only=True)
    corner = torch.tensor([[-8.0, -8.0, -0.5, -0.5]], dtype=torch.float64)
    nearby = corner + 0.3 * torch.randn(400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    _, targets = world_transitions(400, seed=6)
    model.observe(nearby, targets)
    model.fit_local()
    far = torch.tensor([[9.0, 9.0, 0.5, 0.5]], dtype=torch.float64)  # 24 units = 12 lengthscales away
    # Prior variance 1 up to the data's vanishing correlation (2e-10); the original's formula gives ~0.15 here.
    assert abs(float(model.predict(far)[1]) - 1.0) < 1e-8
    assert float(model.predict(corner)[1]) < 0.1


def test_prediction_before_fit_is_the_prior_and_noise_is_added_on_request():
    model = small_model()
    x, _ = world_transitions(20, seed=7)
    mean, variance = model.predict(x)
    with torch.no_grad():
        prior = model.kernel(x, diag=True)
    assert not model.has_posterior
    assert torch.equal(mean, torch.zeros(20, 2, dtype=torch.float64)) and torch.equal(variance, prior)
    model.observe(*world_transitions(30, seed=8))
    model.fit_local()
    latent = model.predict(x)[1]
    assert torch.equal(model.predict(x, include_noise=True)[1], latent + NOISE_VAR)


def test_failed_fit_raises_and_keeps_the_previous_posterior():
    model = small_model()
    model.observe(*world_transitions(100, seed=9))
    model.fit_local()
    x, _ = world_transitions(10, seed=10)
    before = model.predict(x)
    bad = model.pack_statistics().copy()
    bad[0] = np.nan
    with pytest.raises(PosteriorError, match="NaN or inf"):
        model.fit(bad)
    not_psd = np.zeros(packed_size(model.num_inducing, model.out_dim))
    not_psd[0] = -10.0  # Jw[0, 0] = -10: A = I + Jw has a negative pivot whatever the jitter
    with pytest.raises(PosteriorError, match=r"I \+ L\^-1 J L\^-T failed.*consensus"):
        model.fit(not_psd)
    after = model.predict(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_state_dict_resumes_bit_identically():
    x, y = world_transitions(200, seed=11)
    original = small_model(chunk_size=64)
    original.observe(x[:100], y[:100])  # 36 rows still buffered
    state = {key: value.cpu().clone() if isinstance(value, torch.Tensor) else value
             for key, value in original.state_dict().items()}
    resumed = small_model(chunk_size=64)
    resumed.load_state_dict(state)
    for model in (original, resumed):
        model.observe(x[100:], y[100:])
    np.testing.assert_array_equal(original.pack_statistics(), resumed.pack_statistics())
    assert resumed.num_observed == 200


def test_wrong_shapes_are_named():
    model = small_model()
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\); got \(4,\)"):
        model.observe(np.zeros(4), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="Were the statistics packed with the same M and d"):
        model.fit(np.zeros(10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_gpu_matches_cpu():
    x, y = world_transitions(300, seed=12)
    x_test, _ = world_transitions(50, seed=13)
    predictions = []
    for device in ("cpu", "cuda"):
        inducing = inducing_points(200, INPUT_LOW, INPUT_HIGH, seed=0, device=device)
        model = SparseGP(inducing, world_model_kernel().to(device), NOISE_VAR)
        model.observe(x.numpy(), y.numpy())
        model.fit_local()
        predictions.append([value.cpu() for value in model.predict(x_test.to(device))])
    # Another BLAS sums in another order: round-off amplified by cond(I + Jw) (~1e6).
    for gpu, cpu in zip(predictions[1], predictions[0]):
        assert relative_error(gpu, cpu) < 1e-8
