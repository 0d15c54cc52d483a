"""The algorithms a node can run, each one module implementing `learners.base.Learner`.

The registry names modules, not classes, so that configuration can list the algorithms without
importing torch; `learner_class` imports the one a run uses.
"""

from __future__ import annotations

import importlib

_REGISTRY = {
    "odmar": ("odmar_mpi.learners.odmar", "ODMARLearner"),
    "sac": ("odmar_mpi.learners.sac", "SACLearner"),
    "mamba": ("odmar_mpi.learners.mamba", "MAMBALearner"),
    "ippo": ("odmar_mpi.learners.ippo", "IPPOLearner"),
}
ALGORITHMS = tuple(_REGISTRY)
# The kind of action each algorithm's policy outputs: it must match the world's.
DISCRETE_ACTIONS = {"odmar": False, "sac": False, "mamba": True, "ippo": True}


def learner_class(algorithm: str) -> type:
    """The Learner subclass of `algorithm` (one of ALGORITHMS)."""
    module, name = _REGISTRY[algorithm]
    return getattr(importlib.import_module(module), name)
