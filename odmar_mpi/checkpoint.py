"""Per-rank checkpoints: atomic HDF5 files (temp file, fsync, rename) and their discovery on resume."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import h5py

from odmar_mpi.h5tree import read_tree, write_tree

_NAME = re.compile(r"rank(\d+)_step(\d+)\.h5$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the rank and the file."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, rank: int, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"rank{rank:04d}_step{step:09d}.h5"


def write_atomic_h5(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file via a temp file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the complete new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(run_dir: Path, rank: int, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write this rank's state at `step`, then remove all but its `keep` newest checkpoints."""
    path = checkpoint_path(run_dir, rank, step)
    path.parent.mkdir(parents=True, exist_ok=True)

    def fill(f: h5py.File) -> None:
        write_tree(f, "state", state)
        f.attrs["rank"] = rank
        f.attrs["step"] = step
        f.attrs["complete"] = True  # written last: a file without it was cut short

    write_atomic_h5(path, fill)
    for old in local_steps(run_dir, rank)[:-keep]:
        checkpoint_path(run_dir, rank, old).unlink(missing_ok=True)
    return path


def local_steps(run_dir: Path, rank: int) -> list[int]:
    """Steps at which this rank has a checkpoint file, ascending."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and int(match.group(1)) == rank:
            steps.append(int(match.group(2)))
    return sorted(steps)


def load_checkpoint(run_dir: Path, rank: int, step: int) -> dict[str, Any]:
    """Read this rank's state at `step`; a missing or corrupt file raises CheckpointError naming it."""
    path = checkpoint_path(run_dir, rank, step)
    if not path.is_file():
        have = local_steps(run_dir, rank)
        raise CheckpointError(
            f"rank {rank}: checkpoint {path} is missing (this rank has steps {have or 'none'}); "
            "every rank needs a checkpoint at the common step: restore the file or start a new run."
        )
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False) or int(f.attrs["step"]) != step:
                raise CheckpointError(f"rank {rank}: checkpoint {path} is incomplete (no 'complete' mark).")
            return read_tree(f["state"])
    except CheckpointError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError for damaged files
        raise CheckpointError(
            f"rank {rank}: checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
            "the file is corrupt: delete it to fall back to an older step, or start a new run."
        ) from err
