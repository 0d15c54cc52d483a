"""Inducing points every rank derives from a shared seed, so they agree without a message."""

from __future__ import annotations

from typing import Sequence

import torch


def inducing_points(num: int, low: Sequence[float], high: Sequence[float], seed: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """`num` points of a scrambled Sobol sequence scaled to the box [low, high], float64, shape (num, len(low)).

    The same (num, low, high, seed) gives bit-identical points on every rank and every device.
    """
    if num < 1:
        raise ValueError(f"num_inducing = {num}: need at least one inducing point (the default is 1000).")
    low_t = torch.as_tensor(low, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64)
    if low_t.ndim != 1 or low_t.shape != high_t.shape:
        raise ValueError(f"inducing box: low {list(low)} and high {list(high)} must be flat and of equal length.")
    if not bool(torch.all(low_t < high_t)):
        raise ValueError(f"inducing box: need low < high in every dimension, got low {list(low)}, high {list(high)}.")
    engine = torch.quasirandom.SobolEngine(low_t.numel(), scramble=True, seed=seed)
    unit = engine.draw(num, dtype=torch.float64)  # drawn on the CPU, so every device sees the same points
    return (low_t + (high_t - low_t) * unit).to(device)
