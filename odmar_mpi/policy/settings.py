"""Settings of the policies, declared once (torch-free, so configuration can import them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from odmar_mpi.settings import check_settings, setting


@dataclass
class SACConfig:
    """The `[sac]` settings: networks, optimiser and replay of one agent's SAC (defaults: the original research code's)."""

    hidden: list[int] = setting([256, 256], "Hidden layer widths of actor and critics (ReLU).", unit="units", low=1)
    lr: float = setting(3e-4, "Adam learning rate of actor, critics and temperature.", low=0, low_open=True,
                        aliases=("learning_rate", "lr_actor", "lr_critic", "alpha_lr"))
    gamma: float = setting(0.99, "Discount.", low=0, high=1, high_open=True)
    tau: float = setting(0.005, "Polyak rate of the target critics: target <- target + tau (online - target).",
                         low=0, high=1, low_open=True)
    init_alpha: float = setting(1.0, "Initial entropy temperature.", low=0, low_open=True)
    target_entropy: float = setting(-2.0, "Entropy the temperature steers towards (the original: -act_dim).",
                                    unit="nats")
    batch_size: int = setting(256, "Transitions per SAC update.", low=1, aliases=("batch",))
    buffer_size: int = setting(1_000_000, "Real replay buffer capacity (preallocated, 32 B per transition).",
                               unit="transitions", low=1, aliases=("replay_size", "capacity"))
    updates_per_step: int = setting(10, "SAC updates per environment step after warm-up.", low=1)
    real_ratio: float = setting(0.0, "Share of real transitions per batch (at least one is always real).",
                                low=0, high=1)

    def __post_init__(self) -> None:
        check_settings(self, "sac.")
