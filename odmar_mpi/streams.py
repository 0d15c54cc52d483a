"""Named random streams: every random number a rank draws comes from one of these, seeded from
(run seed, rank, stream), so runs are reproducible and streams never overlap."""

from __future__ import annotations

import numpy as np

# The position of a name is its spawn key: append new streams, never reorder (old runs would change).
STREAMS = ("warmup", "policy", "replay", "imagined", "torch_global", "python_global", "world", "random_eval",
           "model", "init", "evaluate", "starts")
SHARED = 1 << 30  # spawn key of the streams every rank shares (no rank has this index)


def stream_seed(seed: int, rank: int, stream: str) -> int:
    """Independent 63-bit seed of `stream` (one of STREAMS) for `rank` in a run with `seed`."""
    key = STREAMS.index(stream)
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(rank, key)).generate_state(1, np.uint64)[0] >> 1)


def shared_seed(seed: int, stream: str) -> int:
    """A seed every rank derives identically (e.g. to initialise weights that ranks then average)."""
    return stream_seed(seed, SHARED, stream)
