"""Per-rank training records: named tables of rows, kept in memory and appended to HDF5 as the run goes.

The file `<run>/records/rank<r>.h5` has one group per table with one 1-D dataset per column, and
the resolved config, package version, rank and agent count as root attributes. The node declares
its tables (episodes, evaluations, timings: `odmar_mpi.telemetry`), each learner its own (e.g.
`sac`, `model`). `RecordsFile` writes the rows held when a run starts (or resumes) as a new file,
atomically, then appends the rows added since at every evaluation, checkpoint and at the end, in
HDF5's single-writer-multiple-reader mode: the file is readable at any moment, while the run goes and
after the process is killed, even mid-write (a row whose `step` is not yet written is not read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from odmar_mpi.checkpoint import write_atomic_h5, write_error

CHUNK_ROWS = 256  # rows per HDF5 chunk of a column


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

    def last(self, table: str, column: str) -> float:
        """`column` of the last row of `table` (NaN while the table is empty)."""
        rows = self.rows[table]
        return rows[-1][self.tables[table].index(column)] if rows else float("nan")

    def column(self, table: str, name: str) -> np.ndarray:
        index = self.tables[table].index(name)
        return np.array([row[index] for row in self.rows[table]], dtype=np.float64)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: np.array(rows, dtype=np.float64).reshape(len(rows), len(self.tables[name]))
                for name, rows in self.rows.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.rows = {name: [tuple(row) for row in np.asarray(state[name]).tolist()] for name in self.tables}

    def write(self, path: Path, attrs: dict[str, Any]) -> None:
        """Write every table to `path` as a new file, atomically (its columns resizable for `RecordsFile`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def fill(f: h5py.File) -> None:
            for key, value in attrs.items():
                f.attrs[key] = value
            for name, columns in self.tables.items():
                group = f.create_group(name)
                for column in columns:
                    group.create_dataset(column, data=self.column(name, column), maxshape=(None,),
                                         chunks=(CHUNK_ROWS,), fillvalue=np.nan)

        rank = attrs.get("rank")
        # An OS failure (disk full, ...) raises CheckpointWriteError naming the rank, the path and the fix.
        write_atomic_h5(path, fill, rank=None if rank is None else int(rank), what="records file", libver="latest")


class RecordsFile:
    """A rank's records file kept open for appending while the run goes (HDF5 SWMR: always readable)."""

    def __init__(self, path: Path, records: Records, attrs: dict[str, Any]) -> None:
        """Write the rows `records` holds now as a new file (a resumed run drops rows beyond its checkpoint),
        then keep it open to append."""
        self.path, self.records = Path(path), records
        self.rank = int(attrs["rank"]) if "rank" in attrs else None
        records.write(self.path, attrs)
        self.written = {name: len(rows) for name, rows in records.rows.items()}
        self.file: h5py.File | None = h5py.File(self.path, "r+", libver="latest")
        self.file.swmr_mode = True

    def append(self) -> None:
        """Append the rows added to the records since the last call, and flush them to disk."""
        if self.file is None:
            raise RuntimeError(f"records file {self.path} is closed")
        try:
            for name, rows in self.records.rows.items():
                new = rows[self.written[name]:]
                if not new:
                    continue
                start, values = self.written[name], np.array(new, dtype=np.float64)
                columns = self.records.tables[name]
                # "step" last: a row is complete once its step is written (readers drop rows without one)
                for index in sorted(range(len(columns)), key=lambda k: columns[k] == "step"):
                    dataset = self.file[name][columns[index]]
                    dataset.resize((start + len(new),))
                    dataset[start:] = values[:, index]
                self.written[name] += len(new)
            self.file.flush()
        except OSError as err:
            raise write_error(err, self.path, self.rank, "records file",
                              kept="the rows written before are intact and readable") from None

    def close(self) -> None:
        if self.file is not None:
            self.append()
            self.file.close()
            self.file = None


def read_records(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(tables, attributes) of one rank's records file, also while its run is writing it or after the run was
    killed: each table is cut to the rows whose every column, `step` last, was written."""
    with h5py.File(path, "r", swmr=True) as f:
        attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}
        tables = {name: {col: np.asarray(f[name][col][()]) for col in f[name]} for name in f if isinstance(f[name], h5py.Group)}
    for name, table in tables.items():
        rows = min((len(column) for column in table.values()), default=0)
        if "step" in table:
            written = np.flatnonzero(~np.isnan(table["step"][:rows]))
            rows = int(written[-1]) + 1 if written.size else 0
        tables[name] = {col: values[:rows] for col, values in table.items()}
    return tables, attrs
