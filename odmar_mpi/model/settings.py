"""Settings of the world models, declared once (torch-free, so configuration can import them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from odmar_mpi.settings import check_settings, setting


@dataclass
class ModelConfig:
    """The `[model]` settings of ODMAR: the sparse-GP world model, when it is refitted, and the optimistic
    imagined rollouts drawn from it (defaults: the original research code's)."""

    num_inducing: int = setting(1000, "Inducing points M, shared by seed. Memory per rank grows as M^2 "
                                      "(statistics, posterior and consensus buffers: about 40 M^2 bytes).",
                                low=1)
    lengthscale: float = setting(2.0, "RBF lengthscale on raw inputs (position, action).", low=0, low_open=True)
    linear_variance: float = setting(1.0, "Scale of the linear kernel x.y (0 drops the term).", low=0)
    constant: float = setting(0.1, "Constant kernel offset (0 drops the term).", low=0)
    noise_var: float = setting(0.01, "Observation noise variance s^2.", low=0, low_open=True)
    update_every: int = setting(250, "Steps between consensus + posterior + imagination.", unit="steps", low=1)
    holdout_every: int = setting(10, "Every n-th real transition is held out of the model to measure its "
                                     "prediction error; 0 = none.", low=0)
    beta: float = setting(0.01, "Optimism: reward bonus beta * (sum over outputs of the predictive std).", low=0)
    rollout_batch: int = setting(256, "Imagined rollouts started per model update.", low=1)
    rollout_length: int = setting(2, "Imagined steps per rollout.", unit="steps", low=1)
    imagined_keep: int = setting(5, "Model updates whose imagined data stay in the imagined buffer.", low=1)

    def __post_init__(self) -> None:
        check_settings(self, "model.")
