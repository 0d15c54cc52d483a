"""`python -m odmar_mpi.bench gp [--json]`: the sparse-GP world model against references computed in the same run.

Speed: adding transitions one at a time (as the node does), forming the posterior (M = 1000) and
predicting a batch with variance, each against the straightforward way (per-transition rank-1 updates
of the raw statistics, explicit inverses of Kzz and Kzz + J, full n x n matrices for the variance).
Accuracy: the posterior formed from statistics summed over several agents against a centralised
gpytorch SGPR fitted on all their data.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import click
import gpytorch
import numpy as np
import torch

from odmar_mpi.model.inducing import inducing_points
from odmar_mpi.model.kernel import world_model_kernel
from odmar_mpi.model.sparse_gp import SparseGP

WORLD = 10.0  # positions in [-WORLD, WORLD]^2, actions in [-1, 1]^2, as in the reward-collection world
INPUT_LOW = (-WORLD, -WORLD, -1.0, -1.0)
INPUT_HIGH = (WORLD, WORLD, 1.0, 1.0)
NOISE_VAR = 0.01
PREDICT_BATCH = 256 * 5  # rollout start states x agents


def world_transitions(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transitions of the reward-collection world's dynamics: x = (position, action) (num, 4), y = displacement (num, 2).

    Uniform positions and actions; pos' = clip(pos + action * gain) with a per-axis gain ~ Normal(1, 0.1).
    """
    generator = torch.Generator().manual_seed(seed)
    options = dict(dtype=torch.float64, generator=generator)
    gain = 1.0 + 0.1 * torch.randn(2, **options)
    position = WORLD * (2.0 * torch.rand(num, 2, **options) - 1.0)
    action = 2.0 * torch.rand(num, 2, **options) - 1.0
    displacement = (position + action * gain).clamp(-WORLD, WORLD) - position
    return torch.cat([position, action], dim=1), displacement


class _SGPR(gpytorch.models.ExactGP):
    """gpytorch's SGPR: an exact GP whose kernel is the Nystrom approximation through the inducing points."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood: gpytorch.likelihoods.Likelihood,
                 kernel: gpytorch.kernels.Kernel, inducing: torch.Tensor) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.InducingPointKernel(kernel, inducing.clone(), likelihood)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def centralised_reference(kernel: gpytorch.kernels.Kernel, inducing: torch.Tensor, noise_var: float, x: torch.Tensor,
                          y: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centralised DTC prediction on all the data x (n, D), y (n, d): mean (m, d) and latent variance (m,) at x_test.

    Mean: gpytorch's SGPR, one per output column, with the diagonal correction off (on, it predicts
    FITC). Variance: the DTC formula in function space, k** - Q*f (Qff + s^2 I)^-1 Qf*, from the SGPR's
    own Nystrom kernel matrices Q. (The SGPR's predictive variance is the SoR one, and adding the
    Nystrom gap k** - Q** to it cancels large terms: 4e-6 relative error on the default kernel.)
    """
    means = []
    with torch.no_grad(), gpytorch.settings.sgpr_diagonal_correction(False), \
            gpytorch.settings.fast_pred_var(False), gpytorch.settings.max_cholesky_size(10**9):
        for column in y.mT:
            likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
            likelihood.noise = torch.tensor(noise_var, dtype=torch.float64)
            model = _SGPR(x, column.contiguous(), likelihood, kernel, inducing).double().eval()
            likelihood.eval()
            means.append(model(x_test).mean)
        nystrom = model.covar_module  # Q(a, b) = K_az Kzz^-1 K_zb, the same for every output
        train = nystrom(x, x).to_dense() + noise_var * torch.eye(x.shape[0], dtype=torch.float64)
        root = torch.linalg.solve_triangular(torch.linalg.cholesky(train), nystrom(x, x_test).to_dense(), upper=False)
        variance = kernel(x_test, diag=True) - root.square().sum(0)
    return torch.stack(means, dim=1), variance


@dataclass(frozen=True)
class AccuracyCase:
    """A data set and kernel on which to compare the distributed posterior with gpytorch's."""

    num_inducing: int
    transitions: int
    rbf_only: bool
    lengthscale: float
    normalised: bool
    """Inputs scaled to the unit box [0, 1]^4 (inducing points too) instead of raw units."""


WELL_CONDITIONED = AccuracyCase(num_inducing=100, transitions=500, rbf_only=True, lengthscale=0.3, normalised=True)
DEFAULT_KERNEL = AccuracyCase(num_inducing=1000, transitions=500, rbf_only=False, lengthscale=2.0, normalised=False)


def gpytorch_agreement(case: AccuracyCase, agents: int = 3, seed: int = 0) -> dict[str, float]:
    """Split the case's data over `agents` models, fit one of them on the summed statistics, compare with gpytorch.

    Returns max_abs_mean_diff, max_abs_var_diff, rel_mean_diff (max |diff| / max |reference mean|) and
    rel_var_diff (max over test points of |diff| / reference variance), at 200 fresh test inputs.
    """
    x, y = world_transitions(case.transitions, seed)
    x_test, _ = world_transitions(200, seed + 1)
    low, high = torch.tensor(INPUT_LOW), torch.tensor(INPUT_HIGH)
    if case.normalised:
        x, x_test = (x - low) / (high - low), (x_test - low) / (high - low)
        low, high = torch.zeros(4), torch.ones(4)
    kernel = world_model_kernel(case.lengthscale, rbf_only=case.rbf_only)
    inducing = inducing_points(case.num_inducing, low.tolist(), high.tolist(), seed=seed)

    models = [SparseGP(inducing, kernel, NOISE_VAR, out_dim=2) for _ in range(agents)]
    for model, rows in zip(models, torch.arange(case.transitions).chunk(agents)):
        model.observe(x[rows], y[rows])
    models[0].fit(sum(model.pack_statistics() for model in models))
    mean, variance = models[0].predict(x_test)

    ref_mean, ref_variance = centralised_reference(kernel, inducing, NOISE_VAR, x, y, x_test)
    mean_diff, var_diff = (mean - ref_mean).abs(), (variance - ref_variance).abs()
    return {
        "max_abs_mean_diff": float(mean_diff.max()),
        "max_abs_var_diff": float(var_diff.max()),
        "rel_mean_diff": float(mean_diff.max() / ref_mean.abs().max()),
        "rel_var_diff": float((var_diff / ref_variance).max()),
    }


class ExplicitReference:
    """The straightforward way: raw J, h by one rank-1 update per transition, explicit inverses, full matrices."""

    def __init__(self, inducing: torch.Tensor, kernel: gpytorch.kernels.Kernel, noise_var: float, out_dim: int) -> None:
        self.inducing, self.kernel, self.noise_var = inducing, kernel, noise_var
        num = inducing.shape[0]
        self.J = torch.zeros(num, num, dtype=torch.float64)
        self.h = torch.zeros(num, out_dim, dtype=torch.float64)
        with torch.no_grad():
            self.kzz = kernel(inducing, inducing).to_dense()
        self.kzz_inv = torch.linalg.inv(self.kzz)

    def observe(self, x: np.ndarray, y: np.ndarray) -> None:
        with torch.no_grad():
            k = self.kernel(torch.as_tensor(x), self.inducing).to_dense()[0]
        self.J.addr_(k, k, alpha=1.0 / self.noise_var)
        self.h.addr_(k, torch.as_tensor(y[0]), alpha=1.0 / self.noise_var)

    def fit(self) -> None:
        self.sigma = torch.linalg.inv(self.kzz + self.J)
        self.m = self.sigma @ self.h

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cross = self.kernel(x, self.inducing).to_dense()
            prior = self.kernel(x, x).to_dense()
        variance = prior - cross @ self.kzz_inv @ cross.mT + cross @ self.sigma @ cross.mT
        return cross @ self.m, variance.diagonal()


def _best_time(action: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of `repeats` calls, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(num_inducing: int, transitions: int, seed: int) -> dict[str, float]:
    """Seconds for ours and the explicit reference: observe `transitions` one by one, fit, predict a batch."""
    x, y = world_transitions(transitions, seed)
    x_rows, y_rows = x.numpy(), y.numpy()
    kernel = world_model_kernel()
    inducing = inducing_points(num_inducing, INPUT_LOW, INPUT_HIGH, seed=seed)
    model = SparseGP(inducing, kernel, NOISE_VAR, out_dim=2)
    reference = ExplicitReference(inducing, kernel, NOISE_VAR, out_dim=2)

    def observe_ours() -> None:
        for i in range(transitions):
            model.observe(x_rows[i:i + 1], y_rows[i:i + 1])
        model.pack_statistics()  # folds in what is still buffered

    def observe_reference() -> None:
        for i in range(transitions):
            reference.observe(x_rows[i:i + 1], y_rows[i:i + 1])

    x_test, _ = world_transitions(PREDICT_BATCH, seed + 1)
    times = {"observe_s": _best_time(observe_ours, 1), "observe_reference_s": _best_time(observe_reference, 1)}
    packed = model.pack_statistics()
    times["fit_s"] = _best_time(lambda: model.fit(packed), 3)
    times["fit_reference_s"] = _best_time(reference.fit, 3)
    times["predict_s"] = _best_time(lambda: model.predict(x_test), 3)
    times["predict_reference_s"] = _best_time(lambda: reference.predict(x_test), 3)
    return times


def run_benchmark(num_inducing: int, transitions: int, seed: int) -> dict[str, float | int]:
    times = speed(num_inducing, transitions, seed)
    well = gpytorch_agreement(WELL_CONDITIONED, seed=seed)
    default = gpytorch_agreement(DEFAULT_KERNEL, seed=seed)
    result: dict[str, float | int] = {"num_inducing": num_inducing, "transitions": transitions,
                                      "predict_batch": PREDICT_BATCH, "torch_threads": torch.get_num_threads()}
    result.update(times)
    for phase in ("observe", "fit", "predict"):
        result[f"{phase}_speedup"] = times[f"{phase}_reference_s"] / times[f"{phase}_s"]
    result.update(max_abs_mean_diff=well["max_abs_mean_diff"], max_abs_var_diff=well["max_abs_var_diff"],
                  rel_mean_diff_default=default["rel_mean_diff"], rel_var_diff_default=default["rel_var_diff"])
    return result


def print_table(result: dict[str, float | int]) -> None:
    print(f"sparse GP, M = {result['num_inducing']}, {result['torch_threads']} torch threads")
    print(f"{'phase':<40}{'ours (s)':>12}{'reference (s)':>15}{'speedup':>10}")
    labels = {"observe": f"observe {result['transitions']} transitions, one by one",
              "fit": "posterior from statistics",
              "predict": f"predict {result['predict_batch']} inputs with variance"}
    for phase, label in labels.items():
        print(f"{label:<40}{result[f'{phase}_s']:>12.4f}{result[f'{phase}_reference_s']:>15.4f}"
              f"{result[f'{phase}_speedup']:>9.1f}x")
    print("against a centralised gpytorch SGPR on all agents' data:")
    print(f"  RBF only, normalised inputs, M = {WELL_CONDITIONED.num_inducing}: max |mean diff| "
          f"{result['max_abs_mean_diff']:.2e}, max |var diff| {result['max_abs_var_diff']:.2e}")
    print(f"  default kernel, raw inputs, M = {DEFAULT_KERNEL.num_inducing}: relative mean diff "
          f"{result['rel_mean_diff_default']:.2e}, relative var diff {result['rel_var_diff_default']:.2e}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--num-inducing", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--transitions", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def cli(as_json: bool, num_inducing: int, transitions: int, seed: int) -> None:
    """Time the sparse-GP model against explicit inverses, and check it against gpytorch's SGPR."""
    result = run_benchmark(num_inducing, transitions, seed)
    if as_json:
        print(json.dumps(result))
    else:
        print_table(result)


def main(argv: list[str]) -> None:
    cli.main(args=argv, prog_name="python -m odmar_mpi.bench gp")
