"""SAC networks: a tanh-squashed Gaussian actor and twin critics evaluated as one batched network.

Every parameter is initialised from an explicit `torch.Generator` (never the global RNG), by one
of two schemes: "fan_in", the distribution of PyTorch's default `nn.Linear` init (weights and
biases uniform in +-1/sqrt(fan_in)); "xavier", the original research code's (weights uniform in
+-sqrt(6/(fan_in + fan_out)), biases zero). Networks are built on the CPU and moved afterwards, so
a seed gives the same parameters on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _init_layer_(weight: torch.Tensor, bias: torch.Tensor, in_dim: int, out_dim: int, init: str,
                 generator: torch.Generator) -> None:
    """Initialise one layer's weight and bias in place by the scheme `init` ("fan_in" or "xavier")."""
    with torch.no_grad():
        if init == "fan_in":
            bound = 1.0 / math.sqrt(in_dim)
            weight.uniform_(-bound, bound, generator=generator)
            bias.uniform_(-bound, bound, generator=generator)
        elif init == "xavier":
            bound = math.sqrt(6.0 / (in_dim + out_dim))
            weight.uniform_(-bound, bound, generator=generator)
            bias.zero_()
        else:
            raise ValueError(f"network init = {init!r}: must be 'fan_in' or 'xavier'")


def _linear(in_dim: int, out_dim: int, generator: torch.Generator, init: str) -> nn.Linear:
    # Built on "meta" so nn.Linear's own init draws nothing from the global RNG.
    layer = nn.Linear(in_dim, out_dim, device="meta").to_empty(device="cpu")
    _init_layer_(layer.weight, layer.bias, in_dim, out_dim, init, generator)
    return layer


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-density.

    `mean`, `log_std`, `noise`: (..., act_dim); returns action = tanh(mean + exp(log_std) * noise),
    shape (..., act_dim), and log pi(action), shape (...), including the tanh change of variables
    log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) (stable for large |u|).
    """
    pre_tanh = mean + log_std.exp() * noise
    log_prob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI
                - 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return torch.tanh(pre_tanh), log_prob


class Actor(nn.Module):
    """Gaussian policy squashed by tanh: obs (B, obs_dim) -> mean, log_std (B, act_dim) each.

    log_std is clamped to [LOG_STD_MIN, LOG_STD_MAX] = [-20, 2] (the original's bounds).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], generator: torch.Generator,
                 init: str = "fan_in") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers += [_linear(width, size, generator, init), nn.ReLU()]
            width = size
        self.trunk = nn.Sequential(*layers)
        # mean and log_std in one matmul (the original's two heads have xavier bounds
        # sqrt(6/(width + act_dim)), this one sqrt(6/(width + 2 act_dim)): 0.4 % apart at width 256)
        self.head = _linear(width, 2 * act_dim, generator, init)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stochastic action (B, act_dim) in (-1, 1) and its log-probability (B,); noise from `generator`."""
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return squashed_gaussian(mean, log_std, noise)


class TwinCritic(nn.Module):
    """Two Q-networks Q_k(obs, action), k = 0, 1, held as stacked weights and evaluated together.

    Layer l holds weight (2, in_l, out_l) and bias (2, 1, out_l); one `baddbmm` per layer runs both
    critics, so a forward and backward cost the launches of one network. Each member is
    initialised like an independent MLP by the scheme `init`.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], generator: torch.Generator,
                 init: str = "fan_in") -> None:
        super().__init__()
        widths = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for in_dim, out_dim in zip(widths[:-1], widths[1:]):
            weight = torch.empty(2, in_dim, out_dim)
            bias = torch.empty(2, 1, out_dim)
            for member in range(2):
                _init_layer_(weight[member], bias[member], in_dim, out_dim, init, generator)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Q-values of both critics, shape (2, B), for obs (B, obs_dim) and actions (B, act_dim).

        frozen=True uses detached weights: gradients reach `actions` (the actor's loss) but not
        the critics' parameters.
        """
        x = torch.cat([obs, actions], dim=-1).expand(2, -1, -1)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if frozen:
                weight, bias = weight.detach(), bias.detach()
            x = torch.baddbmm(bias, x, weight)
            if layer < last:
                x = x.relu_()  # in place: baddbmm's backward does not need its output
        return x.squeeze(-1)
