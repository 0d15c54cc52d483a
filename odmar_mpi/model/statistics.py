"""Sufficient statistics of the sparse GP and their packing into one flat float64 buffer.

J = sum_x f(x) f(x)^T / s^2 (M x M, symmetric) and h = sum_x f(x) y^T / s^2 (M x d) for M features f(x)
per input (the model passes whitened kernel features L^-1 k_Z(x)). They are sums over data, so
statistics from different agents add. Where the sums come from is the caller's business.

Packed layout: the upper triangle of J row by row (J[0, 0:M], J[1, 1:M], ...), then h row-major;
length M (M + 1) / 2 + M d.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def packed_size(num_inducing: int, out_dim: int) -> int:
    """Length of the packed buffer: M (M + 1) / 2 + M d."""
    return num_inducing * (num_inducing + 1) // 2 + num_inducing * out_dim


@lru_cache(maxsize=4)
def _triangle(num_inducing: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the upper triangle (i <= j, row by row) and of the mirrored entries (j, i)."""
    rows, cols = torch.triu_indices(num_inducing, num_inducing, device=device)
    return rows * num_inducing + cols, cols * num_inducing + rows


def mirror_upper(J: torch.Tensor) -> None:
    """Copy J's upper triangle onto its lower one in place, so J is exactly symmetric."""
    upper, lower = _triangle(J.shape[0], J.device)
    flat = J.view(-1)
    flat[lower] = flat[upper]


def accumulate(J: torch.Tensor, h: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
               noise_var: float) -> None:
    """J += F^T F / s^2 and h += F^T Y / s^2 in place, for features F (n, M) and targets Y (n, d). O(n M^2).

    J stays exactly symmetric (a GEMM does not promise that its two triangles round alike).
    """
    J.addmm_(features.mT, features, alpha=1.0 / noise_var)
    h.addmm_(features.mT, targets, alpha=1.0 / noise_var)
    mirror_upper(J)


def pack(J: torch.Tensor, h: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
    """Upper triangle of J and all of h in one contiguous float64 host buffer (written into `out` if given)."""
    num_inducing, out_dim = h.shape
    size = packed_size(num_inducing, out_dim)
    if out is None:
        out = np.empty(size, dtype=np.float64)
    elif out.shape != (size,) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"pack: out must be a contiguous float64 array of shape ({size},) for M = {num_inducing}, "
                         f"d = {out_dim}; got {out.dtype} {out.shape}. Allocate it with np.empty(packed_size(M, d)).")
    upper, _ = _triangle(num_inducing, J.device)
    host = torch.from_numpy(out)
    triangle = upper.numel()
    host[:triangle].copy_(J.reshape(-1)[upper])
    host[triangle:].copy_(h.reshape(-1))
    return out


def unpack(buf: np.ndarray | torch.Tensor, num_inducing: int, out_dim: int,
           device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack`: J (M, M), exactly symmetric, and h (M, d), new float64 tensors on `device`."""
    size = packed_size(num_inducing, out_dim)
    source = torch.as_tensor(buf).reshape(-1)
    if source.numel() != size or source.dtype != torch.float64:
        raise ValueError(f"unpack: expected {size} float64 values for M = {num_inducing}, d = {out_dim}; "
                         f"got {source.numel()} {source.dtype}. Were the statistics packed with the same M and d?")
    source = source.to(device)
    upper, lower = _triangle(num_inducing, source.device)
    triangle = upper.numel()
    J = torch.empty(num_inducing * num_inducing, dtype=torch.float64, device=source.device)
    J[upper] = source[:triangle]
    J[lower] = source[:triangle]
    h = source[triangle:].reshape(num_inducing, out_dim).clone()
    return J.view(num_inducing, num_inducing), h
