"""Per-rank checkpoints: atomic, checksummed HDF5 files, their verification and discovery on resume.

A checkpoint is `<run>/checkpoints/rank<rrrr>_step<sssssssss>.h5`: the state under /state as
odmar_mpi.h5tree writes it (every dataset with the CRC32 of its bytes) and root attributes
`rank`, `step`, `ranks` (the run's rank count), `checksum` = "crc32" and `complete` (written last).

Promises:
- A write goes to a temp file `.<name>.tmp<pid>` in the same folder, is fsynced and renamed over
  the final name, so a crash leaves the old file or the whole new one. Any OS failure (disk full,
  quota, I/O error, read-only filesystem, permissions) raises CheckpointWriteError, one line naming
  the rank, the path, the OS reason and the fix; the temp file is removed and older checkpoints are
  pruned only after the new one is complete and renamed, so the previous one stays intact.
  `remove_temporaries` clears temp files left by a writer that was killed.
- Loading verifies every checksum: altered values, a damaged or truncated file, or one without its
  `complete` mark raise CheckpointCorrupt naming the rank, the file and (for a checksum) the dataset;
  `verify_checkpoint` gives the same verdict as a string, and `loadable_steps` /
  `newest_common_step` let resume fall back to the newest step every rank can load.

Files written before checksums existed (no `checksum` attribute) still load, unverified.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import h5py

from odmar_mpi.h5tree import ChecksumMismatch, read_tree, write_tree

_NAME = re.compile(r"rank(\d+)_step(\d+)\.h5$")
_TEMP = re.compile(r"\.rank(\d+)(?:_step\d+)?\.h5\.tmp\d+$")  # checkpoint or records temp file of a rank
CHECKSUM_KIND = "crc32"
FALLBACK = ("resume falls back to the newest older step that every rank can load "
            "(if none is left, start a new run with --out)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or cannot be written; the message names the rank and the file."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint exists but cannot be trusted: damaged, truncated, incomplete, or a checksum mismatch.

    Recoverable: resume can fall back to an older step. Attributes: rank, path, reason, dataset
    (the HDF5 path of the dataset whose checksum failed, else None).
    """

    def __init__(self, rank: int | str, path: Path, reason: str, dataset: str | None = None) -> None:
        self.rank, self.path, self.reason, self.dataset = rank, Path(path), reason, dataset
        super().__init__(f"rank {rank}: checkpoint {path} {reason}; {FALLBACK}.")


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint or records file failed in the OS (disk full, quota, I/O error, read-only...).

    Attributes: rank, path, errno (or None), os_error (the original exception).
    """

    def __init__(self, message: str, rank: int | str, path: Path, code: int | None, os_error: OSError) -> None:
        self.rank, self.path, self.errno, self.os_error = rank, Path(path), code, os_error
        super().__init__(message)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, rank: int, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"rank{rank:04d}_step{step:09d}.h5"


def temp_path(path: Path) -> Path:
    """The temp file a write of `path` goes through (this process's)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


# ---------------------------------------------------------------------------------------------- writing


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_code(err: OSError) -> int | None:
    """The errno of an OSError, also when h5py only wrote it into the message ('errno = 28')."""
    if isinstance(err.errno, int) and err.errno > 0:
        return err.errno
    match = re.search(r"errno\s*=\s*(\d+)", str(err))
    return int(match.group(1)) if match else None


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count < 10e9 else f"{count / 1e9:.1f} GB"


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f", {_size(free)} free there"


def _rank_of(path: Path) -> int | str:
    match = re.match(r"rank(\d+)", Path(path).name)
    return int(match.group(1)) if match else "?"


def write_error(err: OSError, path: Path, rank: int | str | None = None, what: str = "file",
                kept: str | None = None, needed: int | None = None, temp_left: Path | None = None) -> CheckpointWriteError:
    """The one-line CheckpointWriteError for an OS failure while writing `path`."""
    path = Path(path)
    rank = _rank_of(path) if rank is None else rank
    folder = path.parent
    run_dir = folder.parent if folder.name in ("checkpoints", "records") else folder
    code = _os_code(err)
    if code is not None:
        reason = f"{os.strerror(code)} ({errno.errorcode.get(code, f'errno {code}')}"
        if code in (errno.ENOSPC, errno.EDQUOT):
            reason += (f"; the file needs {_size(needed)}" if needed else "") + _free_space(folder)
        reason += ")"
    else:
        reason = _one_line(err.strerror or err)
    resume = f"then continue with --resume {run_dir} (a new run takes --out DIR)"
    if code == errno.ENOSPC:
        fix = f"free space on the filesystem of {folder}, or move {run_dir} to one with room, {resume}"
    elif code == errno.EDQUOT:
        fix = f"free space within your quota on {folder} (or raise the quota), or move {run_dir} elsewhere, {resume}"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"make {folder} writable, or move {run_dir} to a writable filesystem, {resume}"
    else:
        fix = f"check the filesystem of {folder} (I/O errors: see dmesg), or move {run_dir} to another filesystem, {resume}"
    if kept is None:
        kept = f"the previous {path.name} is intact" if path.exists() else "no earlier file was replaced"
    temp = (f"the temporary file {temp_left} could not be removed (remove_temporaries removes it on the next start)"
            if temp_left is not None else "no temporary file is left")
    message = f"rank {rank}: cannot write {what} {path}: {reason}. Fix: {fix}. Nothing lost: {kept}; {temp}."
    return CheckpointWriteError(message, rank, path, code, err)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class _GuardedFile:
    """The file object h5py writes through ('fileobj' driver); no OS error ever reaches HDF5.

    Writes go to the real file until the first OSError (disk full, quota, I/O error). From then on
    the file's content continues in memory, so HDF5 finishes and closes cleanly, and the caller
    raises `error` afterwards. (Measured with h5py 3.16 / HDF5 2.0 on a full tmpfs: a failed write
    inside HDF5 leaves objects whose deallocation prints one "Exception ignored" traceback per
    object, hundreds for a checkpoint, and the process can crash at exit.)
    """

    def __init__(self, raw: io.FileIO) -> None:
        self.raw = raw
        self.error: OSError | None = None
        self.memory: io.BytesIO | None = None

    def _fail(self, err: OSError) -> None:
        self.error = self.error or err
        if self.memory is not None:
            return
        content = bytearray()
        try:  # what was written so far, so that HDF5 reads back what it wrote
            size = os.fstat(self.raw.fileno()).st_size
            while len(content) < size:
                chunk = os.pread(self.raw.fileno(), min(size - len(content), 1 << 30), len(content))
                if not chunk:
                    break
                content += chunk
        except OSError:
            pass
        self.memory = io.BytesIO(bytes(content))

    def _call(self, name: str, *args: Any) -> Any:
        if self.memory is None:
            position = self.raw.tell()
            try:
                return getattr(self.raw, name)(*args)
            except OSError as err:
                self._fail(err)
                self.memory.seek(position)
        return getattr(self.memory, name)(*args)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.memory is None:
            position = self.raw.tell()
            try:
                done = 0
                while done < len(view):  # FileIO.write may write part of a large buffer
                    done += self.raw.write(view[done:]) or 0
                return done
            except OSError as err:
                self._fail(err)
                self.memory.seek(position)
        return self.memory.write(view)

    def read(self, size: int = -1) -> bytes:
        return self._call("read", size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._call("seek", offset, whence)

    def tell(self) -> int:
        return self._call("tell")

    def truncate(self, size: int | None = None) -> int:
        return self._call("truncate", size)

    def flush(self) -> None:
        pass  # the real file is unbuffered; the caller fsyncs


def write_atomic_h5(path: Path, fill: Callable[[h5py.File], None], *, rank: int | None = None,
                    what: str = "file", kept: str | None = None, libver: str | None = None) -> None:
    """Write an HDF5 file via a temp file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the complete new one, never half of one.
    Any OS failure on the way (disk full, quota, I/O error, read-only filesystem, permissions)
    raises one CheckpointWriteError naming `rank` (default: from the file name), the path, the OS
    reason and the fix, with `kept` saying what is intact; HDF5 itself never sees the failure
    (see _GuardedFile). The temp file is removed in every case. Exceptions from `fill` that are
    not OS errors propagate unchanged. `libver` goes to h5py.File ("latest" allows SWMR appends later).
    """
    path = Path(path)
    tmp = temp_path(path)
    needed = None
    try:
        try:
            with open(tmp, "w+b", buffering=0) as raw:
                guarded = _GuardedFile(raw)
                with h5py.File(guarded, "w", libver=libver) as f:
                    fill(f)
                if guarded.error is not None:
                    needed = guarded.memory.getbuffer().nbytes  # the whole file, completed in memory
                    raise guarded.error
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # remove_temporaries retries on the next start
        _fsync_dir(path.parent)
    except OSError as err:
        raise write_error(err, path, rank, what, kept, needed, tmp if tmp.exists() else None) from None


def save_checkpoint(run_dir: Path, rank: int, step: int, state: dict[str, Any], keep: int,
                    ranks: int | None = None) -> Path:
    """Write this rank's state at `step` (checksummed), then prune: keep its `keep` newest checkpoints.

    `ranks` (the run's rank count) is stored for resume to compare. Checkpoints at later steps than
    `step` are removed too: after a resume that fell back to an older step they belong to an
    abandoned history. Pruning happens only after the new file is complete and renamed.
    Raises CheckpointWriteError (one line: rank, path, OS reason, fix) if the OS refuses the write.
    """
    path = checkpoint_path(run_dir, rank, step)
    previous = [s for s in local_steps(run_dir, rank) if s != step]
    kept = (f"the previous checkpoint (step {previous[-1]}) is intact" if previous
            else "this rank had no earlier checkpoint")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, path, rank, "checkpoint", kept) from None

    def fill(f: h5py.File) -> None:
        write_tree(f, "state", state)
        f.attrs["rank"] = rank
        f.attrs["step"] = step
        if ranks is not None:
            f.attrs["ranks"] = ranks
        f.attrs["checksum"] = CHECKSUM_KIND
        f.attrs["complete"] = True  # written last: a file without it was cut short

    write_atomic_h5(path, fill, rank=rank, what="checkpoint", kept=kept)
    steps = local_steps(run_dir, rank)
    earlier = [s for s in steps if s <= step]
    for old in [s for s in steps if s > step] + earlier[:-max(keep, 1)]:
        try:
            checkpoint_path(run_dir, rank, old).unlink(missing_ok=True)
        except OSError:
            pass  # an extra old checkpoint is harmless
    return path


def remove_temporaries(run_dir: Path, rank: int) -> list[Path]:
    """Remove this rank's temp files (`.<name>.tmp<pid>` in checkpoints/ and records/) left by a writer
    that crashed or failed; returns the paths removed. Call it before the rank writes anything."""
    removed = []
    for folder in (checkpoint_dir(run_dir), Path(run_dir) / "records"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            match = _TEMP.match(entry.name)
            if match and int(match.group(1)) == rank and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------- finding


def local_steps(run_dir: Path, rank: int) -> list[int]:
    """Steps at which this rank has a checkpoint file, ascending (not verified: see loadable_steps)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and int(match.group(1)) == rank:
            steps.append(int(match.group(2)))
    return sorted(steps)


def checkpoint_info(path: Path) -> dict[str, Any]:
    """A checkpoint's root attributes: rank, step, ranks (None if not recorded), checksum (None: unverified
    old format) and complete. Reads no state. Raises CheckpointCorrupt if the file cannot be opened."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except Exception as err:  # h5py raises OSError for damaged files
        raise CheckpointCorrupt(_rank_of(path), path, _unreadable(err)) from None

    def number(key: str) -> int | None:
        return int(attrs[key]) if key in attrs else None

    kind = attrs.get("checksum")
    return {"rank": number("rank"), "step": number("step"), "ranks": number("ranks"),
            "checksum": kind.decode() if isinstance(kind, bytes) else kind,
            "complete": bool(attrs.get("complete", False))}


def _unreadable(err: Exception) -> str:
    return f"cannot be read ({type(err).__name__}: {_one_line(err, 200)}): the file is damaged"


def _read(run_dir: Path, rank: int, step: int, ranks: int | None) -> dict[str, Any]:
    """Open, check the header, read and verify the whole state; CheckpointCorrupt on any problem."""
    path = checkpoint_path(run_dir, rank, step)
    if not path.is_file():
        have = local_steps(run_dir, rank)
        raise CheckpointError(
            f"rank {rank}: checkpoint {path} is missing (this rank has steps {have or 'none'}); "
            "every rank needs a checkpoint at the common step: restore the file or start a new run."
        )
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # not HDF5, truncated, unreadable
        raise CheckpointCorrupt(rank, path, _unreadable(err)) from None
    with f:
        try:
            attrs = dict(f.attrs)
            if not attrs.get("complete", False):
                raise CheckpointCorrupt(rank, path, "is incomplete (no 'complete' mark: its writer was cut short)")
            if int(attrs.get("step", -1)) != step or int(attrs.get("rank", -1)) != rank:
                raise CheckpointCorrupt(rank, path, f"holds rank {attrs.get('rank')} at step {attrs.get('step')}, "
                                                    f"not rank {rank} at step {step} as its name says")
            if ranks is not None and "ranks" in attrs and int(attrs["ranks"]) != ranks:
                raise CheckpointError(
                    f"rank {rank}: checkpoint {path} was written by a run of {int(attrs['ranks'])} ranks, this job has "
                    f"{ranks}: resume with {int(attrs['ranks'])} ranks (mpirun -n {int(attrs['ranks'])}), or start a new run."
                )
            verify = attrs.get("checksum") in (CHECKSUM_KIND, CHECKSUM_KIND.encode())
            return read_tree(f["state"], verify=verify)
        except CheckpointError:
            raise
        except ChecksumMismatch as err:
            raise CheckpointCorrupt(rank, path, f"is corrupt: {err}", dataset=err.dataset) from None
        except Exception as err:  # h5py raises OSError/KeyError/ValueError for damaged files
            raise CheckpointCorrupt(rank, path, _unreadable(err)) from None


def load_checkpoint(run_dir: Path, rank: int, step: int, ranks: int | None = None) -> dict[str, Any]:
    """Read this rank's state at `step`, verifying every dataset's checksum.

    Raises CheckpointError if the file is missing (or, with `ranks`, was written by a run with another
    rank count), CheckpointCorrupt (a CheckpointError) if it is damaged, truncated, incomplete or a
    checksum fails; the message names the rank, the file and the dataset.
    """
    return _read(run_dir, rank, step, ranks)


def verify_checkpoint(run_dir: Path, rank: int, step: int, ranks: int | None = None) -> str | None:
    """None if this rank's checkpoint at `step` is present, complete and every checksum matches (and, with
    `ranks`, was written by a run of that many ranks), else the reason in one line.

    It reads the state as load_checkpoint does, so None means load_checkpoint will succeed.
    """
    try:
        _read(run_dir, rank, step, ranks)
    except CheckpointError as err:
        return str(err)
    return None


def loadable_steps(run_dir: Path, rank: int, ranks: int | None = None) -> tuple[list[int], list[str]]:
    """(steps this rank can load, ascending; one line per rejected step saying why).

    Verifies every file of the rank (reads each once), newest first: resume needs the whole set, since
    the step it loads must be loadable on every rank (see newest_common_step).
    """
    good, rejected = [], []
    for step in reversed(local_steps(run_dir, rank)):
        reason = verify_checkpoint(run_dir, rank, step, ranks)
        if reason is None:
            good.append(step)
        else:
            rejected.append(reason)
    return sorted(good), rejected


def newest_common_step(steps_per_rank: Iterable[Iterable[int]]) -> int | None:
    """The largest step present in every rank's list (e.g. each rank's loadable_steps), or None."""
    common: set[int] | None = None
    for steps in steps_per_rank:
        common = set(steps) if common is None else common & set(steps)
    return max(common) if common else None
