"""The world model's kernel, evaluated by gpytorch in float64."""

from __future__ import annotations

import gpytorch
import torch


def world_model_kernel(lengthscale: float = 2.0, linear_variance: float = 1.0, constant: float = 0.1,
                       rbf_only: bool = False) -> gpytorch.kernels.Kernel:
    """k(x, x') = exp(-|x - x'|^2 / (2 lengthscale^2)) + linear_variance * x.x' + constant, float64 on the CPU.

    The original's kernel (RBF 2.0 + 1.0 * x.y + 0.1). `rbf_only` keeps the RBF term alone. A zero
    linear_variance or constant drops that term (gpytorch's positive constraints cannot hold 0).
    Call `.to(device)` to move it.
    """
    if lengthscale <= 0:
        raise ValueError(f"model.lengthscale = {lengthscale}: must be > 0 (the original uses 2.0).")
    if linear_variance < 0 or constant < 0:
        raise ValueError(f"model.linear_variance = {linear_variance}, model.constant = {constant}: "
                         "both must be >= 0 (the original uses 1.0 and 0.1).")
    # Parameters are cast to float64 before they are set, so the softplus round trip keeps their values exact.
    rbf = gpytorch.kernels.RBFKernel().double()
    rbf.lengthscale = torch.tensor(lengthscale, dtype=torch.float64)
    terms: list[gpytorch.kernels.Kernel] = [rbf]
    if not rbf_only and linear_variance > 0:
        linear = gpytorch.kernels.LinearKernel().double()
        linear.variance = torch.tensor(linear_variance, dtype=torch.float64)
        terms.append(linear)
    if not rbf_only and constant > 0:
        # gpytorch's LinearKernel has no offset; ConstantKernel's constant must be set as a tensor.
        offset = gpytorch.kernels.ConstantKernel().double()
        offset.constant = torch.tensor(constant, dtype=torch.float64)
        terms.append(offset)
    return terms[0] if len(terms) == 1 else gpytorch.kernels.AdditiveKernel(*terms)
