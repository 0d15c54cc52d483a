"""`report RUN --csv DIR`: every table of every rank's records as CSV, for pandas, R or a spreadsheet.

DIR/rank0000/eval.csv, DIR/rank0000/timing.csv, ...: a header row of column names ("step" first, the rest
in the records file's order), then exactly the HDF5 rows, each number written so that it reads back as the
same float64 (Python's shortest round-trip repr; NaN as "nan"). DIR/rank0000/attributes.json holds the
file's attributes (config, version, rank, agents, device, metric). The HDF5 records stay the source of
truth; the CSV files are a copy, written again on every export.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from odmar_mpi.report.runs import rank_files, read_rank

ATTRIBUTES_FILE = "attributes.json"


def table_columns(table: dict[str, np.ndarray]) -> list[str]:
    """A table's columns as the CSV header lists them: "step" first, the others in the records file's order."""
    return sorted(table, key=lambda column: column != "step")


def export_csv(run_dir: Path, out: Path) -> list[Path]:
    """Write every table of every rank of `run_dir` under `out` (see the module docstring); returns the files."""
    written = []
    for rank, path in sorted(rank_files(run_dir).items()):
        tables, attrs = read_rank(path)
        folder = Path(out) / f"rank{rank:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            columns = table_columns(table)
            target = folder / f"{name}.csv"
            with open(target, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                writer.writerows(zip(*(map(repr, table[column].astype(np.float64).tolist()) for column in columns)))
            written.append(target)
        attributes = folder / ATTRIBUTES_FILE
        attributes.write_text(json.dumps({key: _plain(value) for key, value in attrs.items()}, indent=1) + "\n")
        written.append(attributes)
    return written


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON can hold it (numpy scalars and arrays as numbers and lists)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
