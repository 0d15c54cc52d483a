"""One agent's sparse-GP world model: local sufficient statistics, and a posterior from (summed) statistics."""

from __future__ import annotations

import gpytorch
import numpy as np
import torch

from odmar_mpi.model.posterior import Posterior, PosteriorError, predict, prior_cholesky, whiten, whitened_posterior
from odmar_mpi.model.statistics import accumulate, pack, unpack

__all__ = ["PosteriorError", "SparseGP"]


class SparseGP:
    """One agent's sparse-GP world model: local sufficient statistics + a posterior formed from (summed) statistics.

    Inputs x (n, D), outputs y (n, d), one kernel shared by the d outputs. Everything lives on the device
    of `inducing`, in float64. The statistics are whitened (see posterior.py): J = L^-1 (sum k k^T / s^2) L^-T
    (M, M) and h = L^-1 (sum k y^T / s^2) (M, d), L = chol(Kzz); sums over data like their unwhitened
    forms, and every rank has the same L. Observed transitions are buffered and folded in, in chunks of
    `chunk_size` (one kernel evaluation, one triangular solve and one rank-n update per chunk); every read
    of the statistics (pack_statistics, fit_local) folds in what is buffered first.
    """

    def __init__(self, inducing: torch.Tensor, kernel: gpytorch.kernels.Kernel, noise_var: float = 0.01,
                 out_dim: int = 2, chunk_size: int = 1024) -> None:
        if inducing.ndim != 2 or inducing.dtype != torch.float64:
            raise ValueError(f"inducing points must be a float64 (M, D) tensor; got {inducing.dtype} "
                             f"{tuple(inducing.shape)}. Build them with inducing_points(...).")
        if noise_var <= 0:
            raise ValueError(f"model.noise_var = {noise_var}: must be > 0 (the original uses 0.01).")
        if out_dim < 1 or chunk_size < 1:
            raise ValueError(f"out_dim = {out_dim}, chunk_size = {chunk_size}: both must be >= 1.")
        not_double = [name for name, value in kernel.named_parameters() if value.dtype != torch.float64]
        if not_double:
            raise ValueError(f"kernel parameters {not_double} are not float64: build the kernel with "
                             "world_model_kernel(...) or call kernel.double().")
        self.inducing = inducing
        self.kernel = kernel
        self.noise_var = float(noise_var)
        self.num_inducing, self.input_dim = inducing.shape
        self.out_dim = out_dim
        self.device = inducing.device
        with torch.no_grad():
            self.chol_kzz = prior_cholesky(kernel(inducing, inducing).to_dense())
        options = dict(dtype=torch.float64, device=self.device)
        self.J = torch.zeros(self.num_inducing, self.num_inducing, **options)
        self.h = torch.zeros(self.num_inducing, out_dim, **options)
        self.num_observed = 0
        self._pending_x = torch.empty(chunk_size, self.input_dim, **options)
        self._pending_y = torch.empty(chunk_size, out_dim, **options)
        self._pending = 0
        self.posterior: Posterior | None = None

    @property
    def has_posterior(self) -> bool:
        return self.posterior is not None

    def observe(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> None:
        """Add transitions x (n, D) -> y (n, d) to the local statistics. O(n M^2) amortised, independent of the past."""
        x = self._rows(x, self.input_dim, "x")
        y = self._rows(y, self.out_dim, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"observe: x has {x.shape[0]} rows but y has {y.shape[0]}; they must pair up.")
        start, count, capacity = 0, x.shape[0], self._pending_x.shape[0]
        while start < count:  # one pass per chunk, not per sample
            take = min(count - start, capacity - self._pending)
            self._pending_x[self._pending:self._pending + take].copy_(x[start:start + take])
            self._pending_y[self._pending:self._pending + take].copy_(y[start:start + take])
            self._pending += take
            start += take
            if self._pending == capacity:
                self._flush()
        self.num_observed += count

    def pack_statistics(self, out: np.ndarray | None = None) -> np.ndarray:
        """Local J (upper triangle) and h in one float64 host buffer of length packed_size(M, d)."""
        self._flush()
        return pack(self.J, self.h, out)

    def fit(self, packed_total: np.ndarray) -> None:
        """Form the posterior from statistics SUMMED over all agents, packed as by pack_statistics.

        On failure (non-finite values, or a system that does not factorise even with jitter) raises
        PosteriorError and keeps the previous posterior.
        """
        J, h = unpack(packed_total, self.num_inducing, self.out_dim, self.device)
        if not (bool(torch.isfinite(J).all()) and bool(torch.isfinite(h).all())):
            raise PosteriorError("the summed model statistics hold NaN or inf: an agent observed a non-finite "
                                 "transition or consensus diverged; the previous posterior is kept.")
        self.posterior = whitened_posterior(J, h)

    def fit_local(self) -> None:
        """Form the posterior from this agent's own statistics only (a single agent, or tests)."""
        self.fit(self.pack_statistics())

    def predict(self, x: torch.Tensor | np.ndarray, include_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (n, d) and variance (n,) at x (n, D); the variance is latent (DTC) unless include_noise.

        The variance is the same for every output (one shared kernel). Before any fit: the prior,
        mean 0 and variance k(x, x).
        """
        x = self._rows(x, self.input_dim, "x")
        with torch.no_grad():
            prior_var = self.kernel(x, diag=True)
            if self.posterior is None:
                mean = torch.zeros(x.shape[0], self.out_dim, dtype=torch.float64, device=self.device)
                variance = prior_var
            else:
                whitened_cross = whiten(self.chol_kzz, self.kernel(x, self.inducing).to_dense())
                mean, variance = predict(self.posterior, whitened_cross, prior_var)
        return mean, (variance + self.noise_var if include_noise else variance)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Local statistics, the transitions not yet folded in, and the count: enough to resume bit-identically."""
        return {
            "J": self.J.clone(),
            "h": self.h.clone(),
            "pending_x": self._pending_x[:self._pending].clone(),
            "pending_y": self._pending_y[:self._pending].clone(),
            "num_observed": self.num_observed,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore what state_dict returned. The posterior is cleared: fit again from the summed statistics."""
        pending = state["pending_x"].shape[0]
        if state["J"].shape != self.J.shape or state["h"].shape != self.h.shape or pending > self._pending_x.shape[0]:
            raise ValueError(f"model state holds J {tuple(state['J'].shape)}, h {tuple(state['h'].shape)} and "
                             f"{pending} pending rows; this model has M = {self.num_inducing}, d = {self.out_dim} "
                             f"and room for {self._pending_x.shape[0]}. Resume with the configuration that wrote it.")
        self.J.copy_(state["J"])
        self.h.copy_(state["h"])
        self._pending_x[:pending].copy_(state["pending_x"])
        self._pending_y[:pending].copy_(state["pending_y"])
        self._pending = pending
        self.num_observed = int(state["num_observed"])
        self.posterior = None

    def _flush(self) -> None:
        """Fold the buffered transitions into J and h: one kernel evaluation, one solve, one rank-n update."""
        if self._pending == 0:
            return
        with torch.no_grad():
            features = whiten(self.chol_kzz, self.kernel(self._pending_x[:self._pending], self.inducing).to_dense())
        accumulate(self.J, self.h, features.mT, self._pending_y[:self._pending], self.noise_var)
        self._pending = 0

    def _rows(self, values: torch.Tensor | np.ndarray, width: int, name: str) -> torch.Tensor:
        rows = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"{name} must have shape (n, {width}); got {tuple(rows.shape)}. "
                             "A single transition is x[None], y[None].")
        return rows
