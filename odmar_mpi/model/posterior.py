"""Sparse-GP (DTC / Titsias SGPR) posterior from summed whitened statistics.

With L = chol(Kzz), inducing values u = L v and whitened features f(x) = L^-1 k_Z(x), the data enter
only through the sums
    Jw = sum f(x) f(x)^T / s^2 = L^-1 J L^-T        hw = sum f(x) y^T / s^2 = L^-1 h
(J, h the unwhitened statistics of the DTC posterior Sigma = (Kzz + J)^-1, m = Sigma h). The posterior
over v has precision A = I + Jw and mean c = A^-1 hw; since Kzz + J = L A L^T it is the same posterior,
but A's eigenvalues are >= 1, so its Cholesky is safe where Kzz + J (condition ~1e16 for the default
kernel at M = 1000) is not. Whitening each feature before summing, rather than whitening the summed J,
keeps predictions within ~1e-9 of gpytorch's SGPR where whitening J afterwards drifted by 1e-5 to 1e-3.
Prediction at x, with B = L^-1 K_zx and R = chol(A):
    mean     = K_xz m                                    = B^T c
    variance = k(x,x) - K_xz Kzz^-1 K_zx + K_xz Sigma K_zx = k(x,x) - |B|^2 + |R^-1 B|^2   (per column)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KZZ_JITTER = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)  # relative to Kzz's mean diagonal
PRECISION_JITTER = (0.0, 1e-10, 1e-8, 1e-6, 1e-4)  # absolute: A >= I, so any need for it means Jw is not PSD


class PosteriorError(RuntimeError):
    """A Cholesky factorisation failed even with the largest jitter; the message says which and what to do."""


@dataclass(frozen=True)
class Posterior:
    """What prediction needs, computed once per fit."""

    chol_precision: torch.Tensor
    """R, lower Cholesky factor of A = I + Jw (+ jitter I), (M, M)."""
    whitened_mean: torch.Tensor
    """c = A^-1 hw, (M, d)."""
    jitter: float
    """Jitter that was added to A's diagonal (0.0 unless Jw was numerically not PSD)."""


def cholesky_with_jitter(matrix: torch.Tensor, jitters: tuple[float, ...], scale: float) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of matrix + jitter * scale * I for the first jitter that works.

    Returns (factor, jitter); raises PosteriorError naming the failing minor if none works.
    """
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    info = 0
    for jitter in jitters:
        factor, info = torch.linalg.cholesky_ex(matrix + (jitter * scale) * eye if jitter else matrix)
        if int(info) == 0:
            return factor, jitter
    raise PosteriorError(f"not positive definite even with jitter {jitters[-1]:g} x {scale:.3g} on the diagonal "
                         f"(leading minor of order {int(info)} failed)")


def prior_cholesky(kzz: torch.Tensor) -> torch.Tensor:
    """L with L L^T = Kzz (+ the smallest relative jitter that makes it factorise), (M, M)."""
    scale = float(kzz.diagonal().mean())
    try:
        factor, _ = cholesky_with_jitter(kzz, KZZ_JITTER, scale)
    except PosteriorError as error:
        raise PosteriorError(f"Cholesky of Kzz ({kzz.shape[0]} inducing points) failed: {error}. The inducing points "
                             "are too close together for the kernel: use fewer of them (model.num_inducing) or a "
                             "shorter lengthscale (model.lengthscale).") from None
    return factor


def whitened_posterior(whitened_J: torch.Tensor, whitened_h: torch.Tensor) -> Posterior:
    """Posterior from summed whitened statistics Jw (M, M) and hw (M, d). O(M^3 / 3); no explicit inverse."""
    precision = whitened_J.clone()
    precision.diagonal().add_(1.0)  # A = I + Jw
    try:
        chol_precision, jitter = cholesky_with_jitter(precision, PRECISION_JITTER, 1.0)
    except PosteriorError as error:
        raise PosteriorError(f"Cholesky of I + L^-1 J L^-T failed: {error}. The summed statistics are not positive "
                             "semi-definite: check that consensus converged (more comm.rounds or a smaller "
                             "comm.tol) and that every rank used the same inducing points and kernel.") from None
    return Posterior(chol_precision, torch.cholesky_solve(whitened_h, chol_precision), jitter)


def whiten(chol_kzz: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """B = L^-1 K_zx (M, n) from K_xz (n, M). O(n M^2)."""
    return torch.linalg.solve_triangular(chol_kzz, cross.mT, upper=False)


def predict(posterior: Posterior, whitened_cross: torch.Tensor,
            prior_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (n, d) and latent DTC variance (n,) from B = L^-1 K_zx (M, n) and k(x, x) (n,).

    One triangular solve and a few products: O(n M^2), and only the diagonal, never an n x n matrix.
    """
    mean = whitened_cross.mT @ posterior.whitened_mean
    explained = torch.linalg.solve_triangular(posterior.chol_precision, whitened_cross, upper=False)  # R^-1 B
    variance = prior_var - whitened_cross.square().sum(0) + explained.square().sum(0)
    return mean, variance
