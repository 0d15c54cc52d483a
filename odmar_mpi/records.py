"""Per-rank training records: named tables of rows, kept in memory and written to HDF5.

The file `<run>/records/rank<r>.h5` has one group per table (`episodes`, `eval`, `model`,
`sac`, `timing`) with one 1-D dataset per column, and the resolved config, package version,
rank and agent count as root attributes. It is rewritten atomically at every checkpoint and
at the end, so it always matches a resumable state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from odmar_mpi.checkpoint import write_atomic_h5

TABLES: dict[str, tuple[str, ...]] = {
    # training episodes: the return the agent learned from (team or own) and its own share
    "episodes": ("step", "return", "own_return"),
    # deterministic evaluation: own mean return and the team's (sum over agents by consensus)
    "eval": ("step", "own_return", "team_return", "model_rmse"),
    # model updates: gossip rounds and final disagreement, held-out prediction error, optimism
    "model": ("step", "consensus_rounds", "consensus_residual", "holdout_rmse", "bonus_mean", "std_mean", "imagined_reward_mean"),
    # SAC diagnostics, averaged over the updates since the previous row
    "sac": ("step", "critic_loss", "actor_loss", "alpha", "entropy", "q_mean"),
    # cumulative wall-clock seconds per phase
    "timing": ("step", "env", "model", "gossip", "imagination", "updates", "eval", "checkpoint"),
}


def records_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "records" / f"rank{rank:04d}.h5"


class Records:
    """Append-only tables; `state()` and `load_state()` let checkpoints carry them exactly."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in TABLES}

    def append(self, table: str, **values: float) -> None:
        columns = TABLES[table]
        if set(values) != set(columns):
            raise KeyError(f"table {table!r} takes columns {columns}, got {sorted(values)}")
        self.rows[table].append(tuple(float(values[c]) for c in columns))

    def column(self, table: str, name: str) -> np.ndarray:
        index = TABLES[table].index(name)
        return np.array([row[index] for row in self.rows[table]], dtype=np.float64)

    def state(self) -> dict[str, np.ndarray]:
        return {name: np.array(rows, dtype=np.float64).reshape(len(rows), len(TABLES[name])) for name, rows in self.rows.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.rows = {name: [tuple(row) for row in np.asarray(state[name]).tolist()] for name in TABLES}

    def write(self, path: Path, attrs: dict[str, Any]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def fill(f: h5py.File) -> None:
            for key, value in attrs.items():
                f.attrs[key] = value
            for name, columns in TABLES.items():
                group = f.create_group(name)
                for column in columns:
                    group.create_dataset(column, data=self.column(name, column))

        rank = attrs.get("rank")
        # An OS failure (disk full, ...) raises CheckpointWriteError naming the rank, the path and the fix.
        write_atomic_h5(path, fill, rank=None if rank is None else int(rank), what="records file")


def read_records(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(tables, attributes) of one rank's records file."""
    with h5py.File(path, "r") as f:
        attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}
        tables = {name: {col: np.asarray(f[name][col][()]) for col in f[name]} for name in f if isinstance(f[name], h5py.Group)}
    return tables, attrs
