"""Reading run folders: every rank's records file, the config the ranks ran with and the run's attributes.

A run folder (written by `python -m odmar_mpi.run`) holds `records/rank<r>.h5` for every rank (see
`odmar_mpi.records`): named tables of float rows, and the resolved config, version, rank, agent count,
device and the world's episode metric (`metric`: "win_rate", "arrival_rate" or "") as attributes. Runs
written by older versions lack some columns and attributes; every reader here treats them as optional.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from odmar_mpi.config import Config, ConfigError, config_from_dict
from odmar_mpi.records import read_records, records_path
from odmar_mpi.run import COMPLETE_MARK
from odmar_mpi.worlds import TEAM_REWARD_WORLDS

_RANK_FILE = re.compile(r"rank(\d+)\.h5$")

Tables = dict[str, dict[str, np.ndarray]]


class ReportError(RuntimeError):
    """A run folder cannot be read; the message names the folder or file and what is expected."""


@dataclass
class Run:
    """One run folder's records: the config it ran with, every rank's tables (index = rank), rank 0's attributes."""

    path: Path
    config: Config
    ranks: list[Tables]
    device: str
    attrs: dict[str, Any]

    @property
    def metric_name(self) -> str:
        """The world's episode metric ("win_rate", "arrival_rate"), "" where it has none or the run predates it."""
        return str(self.attrs.get("metric", "") or "")

    @property
    def complete(self) -> bool:
        """Whether the run did all its steps (its folder holds the COMPLETE mark)."""
        return (self.path / COMPLETE_MARK).exists()


def load_run(run_dir: Path) -> Run:
    """Read every rank's records file of `run_dir`; raises ReportError naming what is missing."""
    run_dir = Path(run_dir)
    found = rank_files(run_dir)
    first_rank = min(found)
    tables0, attrs0 = read_rank(found[first_rank])
    agents = int(attrs0["agents"])
    missing = [records_path(run_dir, r) for r in range(agents) if r not in found]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ReportError(f"run {run_dir} has {agents} agents (from {found[first_rank].name}) but {names} "
                          f"{'is' if len(missing) == 1 else 'are'} missing; every rank writes its own records file.")
    extra = sorted(r for r in found if r >= agents)
    if extra:
        raise ReportError(f"run {run_dir} has {agents} agents but also records of rank(s) {extra}; "
                          "remove the files of another run from its records folder.")
    ranks = [tables0 if r == first_rank else read_rank(found[r])[0] for r in range(agents)]
    return Run(path=run_dir, config=_config_from_attrs(found[first_rank], attrs0), ranks=ranks,
               device=str(attrs0.get("device", "?")), attrs=attrs0)


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds a records file of rank 0 (what every run folder has after its first checkpoint)."""
    return records_path(folder, 0).is_file()


def rank_files(run_dir: Path) -> dict[int, Path]:
    """{rank: records file} of the ranks present; ReportError when there are none."""
    run_dir = Path(run_dir)
    folder = records_path(run_dir, 0).parent
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist; pass a folder written by python -m odmar_mpi.run.")
    found = {int(m.group(1)): p for p in sorted(folder.glob("rank*.h5")) if (m := _RANK_FILE.match(p.name))}
    if not found:
        raise ReportError(f"{run_dir} holds no records: expected {folder}/rank0000.h5 (one file per rank, "
                          "written by python -m odmar_mpi.run at each checkpoint); is this a run folder?")
    return found


def read_rank(path: Path) -> tuple[Tables, dict[str, Any]]:
    """(tables, attributes) of one records file; ReportError when it cannot be read."""
    try:
        return read_records(path)
    except (OSError, KeyError) as err:  # h5py's errors for a damaged or foreign file
        raise ReportError(f"records file {path} cannot be read ({err}); it is damaged or not a records file.") from err


def _config_from_attrs(path: Path, attrs: dict[str, Any]) -> Config:
    # The records carry the config the ranks actually ran (config.toml is not rewritten on resume with --set).
    try:
        return config_from_dict(tomllib.loads(attrs["config"]))
    except (KeyError, tomllib.TOMLDecodeError, ConfigError) as err:
        raise ReportError(f"records file {path} has no readable 'config' attribute ({err}).") from err


def run_label(cfg: Config) -> str:
    """Legend label naming what differs between the paper's settings, e.g. 'odmar beta=0.01', 'sac'."""
    label = f"odmar beta={cfg.model.beta:g}" if cfg.uses_model else cfg.run.algorithm
    if cfg.run.algorithm == "mamba" and cfg.mamba.communication != "neighbours":
        label += f", communication: {cfg.mamba.communication}"
    if not cfg.env.action_penalty:
        label += ", no action penalty"
    if cfg.env.reward_sharing != "team" and cfg.env.world not in TEAM_REWARD_WORLDS:
        label += f", {cfg.env.reward_sharing} rewards"
    return label


def team_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, team evaluation returns) as recorded on rank 0 (every rank holds the same)."""
    table = run.ranks[0]["eval"]
    return table["step"], table["team_return"]


def eval_column(run: Run, column: str) -> np.ndarray | None:
    """Rank 0's column `column` of the `eval` table (one entry per evaluation), None where the run's version did
    not record it. Every rank holds the same team-level figures."""
    return run.ranks[0]["eval"].get(column)


def holdout_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, model held-out RMSE averaged over ranks, NaN where no rank has one) per model update."""
    if any("model" not in t for t in run.ranks):
        return np.empty(0), np.empty(0)
    rows = min(len(t["model"]["step"]) for t in run.ranks)
    per_rank = np.stack([t["model"]["holdout_rmse"][:rows] for t in run.ranks])
    mean = np.array([finite_mean(per_rank[:, i]) for i in range(rows)], dtype=np.float64)
    return run.ranks[0]["model"]["step"][:rows], mean


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none (a rank with no held-out data yet)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan
