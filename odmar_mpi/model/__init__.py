"""World models. Knows nothing of MPI.

The sparse-GP world model of ODMAR: data -> sufficient statistics, (summed) statistics -> posterior.
`odmar_mpi.model.settings` imports no torch; the other exports load torch and gpytorch on first use,
so the configuration (which composes the models' settings) stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

from odmar_mpi.model.settings import ModelConfig

_LAZY = {"PosteriorError": "sparse_gp", "SparseGP": "sparse_gp", "inducing_points": "inducing",
         "world_model_kernel": "kernel", "pack": "statistics", "packed_size": "statistics", "unpack": "statistics"}

__all__ = ["ModelConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"odmar_mpi.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'odmar_mpi.model' has no attribute {name!r}")
