"""SAC for one agent, replay buffers and optimistic imagined rollouts. Knows nothing of GPs or MPI.

`odmar_mpi.policy.settings` imports no torch; the other exports load torch on first use, so the
configuration (which composes the policies' settings) stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

from odmar_mpi.policy.settings import SACConfig

_LAZY = {"SAC": "sac", "Batch": "replay", "ReplayBuffer": "replay", "concat_batches": "replay",
         "sample_mixed": "replay", "imagine_rollouts": "imagination"}

__all__ = ["SAC", "Batch", "ReplayBuffer", "SACConfig", "concat_batches", "imagine_rollouts", "sample_mixed"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"odmar_mpi.policy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'odmar_mpi.policy' has no attribute {name!r}")
