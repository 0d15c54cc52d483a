"""Per-rank training records: named tables of rows, kept in memory and written to HDF5.

The file `<run>/records/rank<r>.h5` has one group per table with one 1-D dataset per column, and
the resolved config, package version, rank and agent count as root attributes. The node declares
its tables (episodes, evaluations, timings: `odmar_mpi.telemetry`), each learner its own (e.g.
`sac`, `model`). The file is rewritten atomically at every checkpoint and at the end, so it always
matches a resumable state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from odmar_mpi.checkpoint import write_atomic_h5


def records_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "records" / f"rank{rank:04d}.h5"


Tables = dict[str, tuple[str, ...]]


class Records:
    """Append-only tables of float rows, {table: column names}; `state_dict()` and `load_state_dict()` let
    checkpoints carry them exactly."""

    def __init__(self, tables: Tables) -> None:
        self.tables = dict(tables)
        self.rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in self.tables}

    def append(self, table: str, **values: float) -> None:
        columns = self.tables[table]
        if set(values) != set(columns):
            raise KeyError(f"table {table!r} takes columns {columns}, got {sorted(values)}")
        self.rows[table].append(tuple(float(values[c]) for c in columns))

    def column(self, table: str, name: str) -> np.ndarray:
        index = self.tables[table].index(name)
        return np.array([row[index] for row in self.rows[table]], dtype=np.float64)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: np.array(rows, dtype=np.float64).reshape(len(rows), len(self.tables[name]))
                for name, rows in self.rows.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.rows = {name: [tuple(row) for row in np.asarray(state[name]).tolist()] for name in self.tables}

    def write(self, path: Path, attrs: dict[str, Any]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def fill(f: h5py.File) -> None:
            for key, value in attrs.items():
                f.attrs[key] = value
            for name, columns in self.tables.items():
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
