"""Checkpoints: checksums verified on load, corrupt files named, failed writes that lose nothing, temp-file cleanup."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from odmar_mpi import checkpoint as ckpt
from odmar_mpi.checkpoint import (CheckpointCorrupt, CheckpointError, CheckpointWriteError, checkpoint_info,
                                  checkpoint_path, load_checkpoint, loadable_steps, local_steps, newest_common_step,
                                  remove_temporaries, save_checkpoint, verify_checkpoint, write_atomic_h5)
from odmar_mpi.h5tree import CHECKSUM
from odmar_mpi.records import Records, records_path

RANK = 3


def state_at(step: int, rows: int = 50) -> dict:
    """A state with every kind of value a node's checkpoint holds."""
    gen = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "real": {"data": torch.rand(rows, 8, generator=gen), "size": rows, "generator": torch.Generator().get_state()},
        "model": {"J": torch.rand(6, 6, generator=gen, dtype=torch.float64), "pending_x": torch.zeros(0, 4)},
        "log_alpha": torch.tensor(0.25),
        "half": torch.arange(4, dtype=torch.bfloat16),
        "mask": np.array([True, False, True]),
        "holdout": {"x": np.arange(12.0).reshape(4, 3), "count": 4},
        "rng": {"numpy": {"state": {"state": 2**127 + 5, "inc": 7}}, "python": (3, (1, 2, 3), None)},
        "residual": float("nan"),
        "clock": {"env": 1.5},
        7: "an int key",
    }


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------- checksums


def test_round_trip_stores_a_checksum_per_dataset_and_the_run_shape(tmp_path):
    state = state_at(100)
    path = save_checkpoint(tmp_path, RANK, 100, state, keep=2, ranks=5)
    assert path == checkpoint_path(tmp_path, RANK, 100)
    assert_same(load_checkpoint(tmp_path, RANK, 100), state)
    assert verify_checkpoint(tmp_path, RANK, 100) is None
    with h5py.File(path) as f:
        checked = []
        f.visititems(lambda name, node: checked.append(CHECKSUM in node.attrs) if isinstance(node, h5py.Dataset) else None)
        assert len(checked) > 15 and all(checked)
    assert checkpoint_info(path) == {"rank": RANK, "step": 100, "ranks": 5, "checksum": "crc32", "complete": True}


@pytest.mark.parametrize("victim, logical, damage", [
    ("real/data", "state['real']['data']", lambda d: d.__setitem__((5, 3), d[5, 3] + 1.0)),
    ("model/J", "state['model']['J']", lambda d: d.__setitem__((0, 0), -d[0, 0])),
    ("holdout/count", "state['holdout']['count']", lambda d: d.__setitem__((), "5")),  # a JSON scalar
    ("log_alpha", "state['log_alpha']", lambda d: d.__setitem__((), 9.0)),  # a 0-d tensor
])
def test_an_altered_value_is_detected_and_named(tmp_path, victim, logical, damage):
    save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2, ranks=5)
    path = checkpoint_path(tmp_path, RANK, 100)
    with h5py.File(path, "r+") as f:  # the value changes, its stored checksum does not
        group = f["state"]
        for part in victim.split("/"):  # follow dict keys to the HDF5 node
            keys = [k for _, k in json.loads(group.attrs["keys"])]
            group = group[str(keys.index(part))]
        hdf5_name = group.name
        damage(group)
    with pytest.raises(CheckpointCorrupt) as caught:
        load_checkpoint(tmp_path, RANK, 100)
    message = str(caught.value)
    assert isinstance(caught.value, CheckpointError) and caught.value.dataset == hdf5_name
    for part in (f"rank {RANK}", str(path), hdf5_name, logical, "CRC32", "falls back to the newest older step"):
        assert part in message
    assert "\n" not in message
    assert verify_checkpoint(tmp_path, RANK, 100) == message


def test_an_unaltered_neighbour_file_still_verifies(tmp_path):
    for rank in (0, 1):
        save_checkpoint(tmp_path, rank, 100, state_at(100), keep=2)
    with h5py.File(checkpoint_path(tmp_path, 1, 100), "r+") as f:
        f["state/0"][()] = "101"  # the step, as JSON
    assert verify_checkpoint(tmp_path, 0, 100) is None
    assert "state['step']" in verify_checkpoint(tmp_path, 1, 100)


def test_a_truncated_file_is_corrupt_and_named(tmp_path):
    path = save_checkpoint(tmp_path, RANK, 100, state_at(100, rows=2000), keep=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorrupt, match=f"rank {RANK}: checkpoint {path} cannot be read .*damaged"):
        load_checkpoint(tmp_path, RANK, 100)
    reason = verify_checkpoint(tmp_path, RANK, 100)
    assert reason is not None and str(path) in reason and "\n" not in reason


def test_a_file_that_is_not_hdf5_is_corrupt_with_the_message_resume_tests_expect(tmp_path):
    path = save_checkpoint(tmp_path, 1, 500, state_at(500), keep=2)
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(CheckpointCorrupt, match=f"rank 1: checkpoint {path} cannot be read"):
        load_checkpoint(tmp_path, 1, 500)


def test_a_file_without_the_complete_mark_is_corrupt(tmp_path):
    path = save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2)
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(CheckpointCorrupt, match=f"rank {RANK}: checkpoint {path} is incomplete"):
        load_checkpoint(tmp_path, RANK, 100)
    assert "incomplete" in verify_checkpoint(tmp_path, RANK, 100)


def test_a_missing_checksum_attribute_is_corrupt(tmp_path):
    path = save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2)
    with h5py.File(path, "r+") as f:
        del f["state/0"].attrs[CHECKSUM]
    assert "has no crc32 checksum" in verify_checkpoint(tmp_path, RANK, 100)


def test_a_file_of_another_rank_or_step_under_this_name_is_corrupt(tmp_path):
    save_checkpoint(tmp_path, 2, 100, state_at(100), keep=2)
    os.replace(checkpoint_path(tmp_path, 2, 100), checkpoint_path(tmp_path, RANK, 200))
    assert f"holds rank 2 at step 100, not rank {RANK} at step 200" in verify_checkpoint(tmp_path, RANK, 200)


def test_files_from_before_checksums_still_load(tmp_path):
    path = save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2)
    with h5py.File(path, "r+") as f:
        del f.attrs["checksum"]  # the old format: no checksum attributes promised
        f["state/1/0"][0, 0] = 42.0  # state["real"]["data"]
    assert verify_checkpoint(tmp_path, RANK, 100) is None
    assert float(load_checkpoint(tmp_path, RANK, 100)["real"]["data"][0, 0]) == 42.0


def test_a_missing_file_is_an_error_but_not_corrupt(tmp_path):
    save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2)
    with pytest.raises(CheckpointError, match=r"is missing \(this rank has steps \[100\]\)") as caught:
        load_checkpoint(tmp_path, RANK, 200)
    assert not isinstance(caught.value, CheckpointCorrupt)


def test_a_different_rank_count_is_refused(tmp_path):
    save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=2, ranks=4)
    assert load_checkpoint(tmp_path, RANK, 100, ranks=4)["step"] == 100
    with pytest.raises(CheckpointError, match="written by a run of 4 ranks, this job has 5"):
        load_checkpoint(tmp_path, RANK, 100, ranks=5)
    assert "mpirun -n 4" in verify_checkpoint(tmp_path, RANK, 100, ranks=5)


def test_resume_finds_the_newest_step_every_rank_can_load(tmp_path):
    for rank in (0, 1, 2):
        for step in (100, 200, 300):
            save_checkpoint(tmp_path, rank, step, state_at(step), keep=3, ranks=3)
    with h5py.File(checkpoint_path(tmp_path, 1, 300), "r+") as f:
        f["state/1/0"][1, 1] = -1.0  # state["real"]["data"]
    checkpoint_path(tmp_path, 2, 200).write_bytes(b"garbage")
    loadable = [loadable_steps(tmp_path, rank, ranks=3) for rank in (0, 1, 2)]
    assert [steps for steps, _ in loadable] == [[100, 200, 300], [100, 200], [100, 300]]
    assert len(loadable[1][1]) == 1 and "rank 1" in loadable[1][1][0] and "state['real']['data']" in loadable[1][1][0]
    assert newest_common_step(steps for steps, _ in loadable) == 100
    assert newest_common_step([[100, 200], [200, 300]]) == 200
    assert newest_common_step([[100], [200]]) is None and newest_common_step([]) is None


# ------------------------------------------------------------------------------------------- pruning


def test_pruning_keeps_the_newest_and_drops_an_abandoned_future(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, RANK, step, state_at(step), keep=2)
    assert local_steps(tmp_path, RANK) == [200, 300]
    # Resumed from 200 (300 was corrupt elsewhere): the next checkpoint supersedes 300.
    save_checkpoint(tmp_path, RANK, 250, state_at(250), keep=2)
    assert local_steps(tmp_path, RANK) == [200, 250]
    save_checkpoint(tmp_path, RANK, 260, state_at(260), keep=1)
    assert local_steps(tmp_path, RANK) == [260]


# ------------------------------------------------------------------------------------------- failed writes


def check_write_failure(err: CheckpointWriteError, path: Path, reason: str) -> None:
    message = str(err)
    assert "\n" not in message and message.count("rank ") == 1
    assert message.startswith(f"rank {RANK}: cannot write ")
    for part in (str(path), reason, "--resume", "no temporary file is left"):
        assert part in message, (part, message)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MB tmpfs that really fills up (needs root and mount(8); skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root; the monkeypatched and RLIMIT_FSIZE tests cover the rest")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.parametrize("big", [
    {"data": torch.rand(400_000)},  # one 1.6 MB dataset: fails while writing data
    {f"k{i}": torch.rand(1000) for i in range(300)},  # 300 small ones: fails while HDF5 flushes at close
], ids=["one-large-dataset", "many-small-datasets"])
def test_a_full_disk_fails_the_write_cleanly_and_keeps_the_previous_checkpoint(tiny_filesystem, big, capfd):
    run = tiny_filesystem / "run"
    save_checkpoint(run, RANK, 100, state_at(100), keep=1, ranks=4)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(run, RANK, 200, big, keep=1, ranks=4)
    path = checkpoint_path(run, RANK, 200)
    check_write_failure(caught.value, path, "No space left on device (ENOSPC; the file needs")
    assert "the previous checkpoint (step 100) is intact" in str(caught.value)
    assert caught.value.errno == errno.ENOSPC and caught.value.rank == RANK and caught.value.path == path
    assert local_steps(run, RANK) == [100] and leftovers(run / "checkpoints") == []
    assert verify_checkpoint(run, RANK, 100) is None
    assert_same(load_checkpoint(run, RANK, 100), state_at(100))
    # HDF5 never saw the failure: no library tracebacks ("Exception ignored in ... _dealloc").
    assert "Traceback" not in capfd.readouterr().err
    # And the next write, once there is room, works in the same process.
    save_checkpoint(run, RANK, 300, state_at(300), keep=1, ranks=4)
    assert local_steps(run, RANK) == [300] and verify_checkpoint(run, RANK, 300) is None


def test_a_full_disk_fails_a_records_write_with_the_same_error(tiny_filesystem):
    tables = {"episodes": ("step", "return", "own_return")}
    try:
        records = Records(tables)
    except TypeError:  # the API with built-in tables
        records = Records()
    for step in range(100_000):
        records.append("episodes", step=step, own_return=1.0, **{"return": 2.0})
    path = records_path(tiny_filesystem, RANK)
    with pytest.raises(CheckpointWriteError, match=f"rank {RANK}: cannot write records file {path}: No space left"):
        records.write(path, {"rank": RANK})
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("target, code, reason", [
    ("fsync", errno.ENOSPC, "No space left on device (ENOSPC"),
    ("fsync", errno.EDQUOT, "Disk quota exceeded (EDQUOT"),
    ("fsync", errno.EIO, "Input/output error (EIO)"),
    ("replace", errno.EROFS, "Read-only file system (EROFS)"),
    ("replace", errno.EACCES, "Permission denied (EACCES)"),
])
def test_an_os_error_anywhere_in_the_write_loses_nothing(tmp_path, monkeypatch, target, code, reason):
    save_checkpoint(tmp_path, RANK, 100, state_at(100), keep=1, ranks=4)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ckpt.os, target, fail)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(tmp_path, RANK, 200, state_at(200), keep=1, ranks=4)
    monkeypatch.undo()
    check_write_failure(caught.value, checkpoint_path(tmp_path, RANK, 200), reason)
    assert "the previous checkpoint (step 100) is intact" in str(caught.value)
    assert caught.value.__cause__ is None and isinstance(caught.value.os_error, OSError)
    assert local_steps(tmp_path, RANK) == [100] and leftovers(tmp_path / "checkpoints") == []
    assert verify_checkpoint(tmp_path, RANK, 100) is None


def test_an_h5py_style_error_with_the_errno_only_in_its_text_is_decoded(tmp_path):
    err = OSError("Unable to synchronously create file (unable to open file: name = 'x', errno = 28, "
                  "error message = 'No space left on device')")
    message = str(ckpt.write_error(err, checkpoint_path(tmp_path, RANK, 5), RANK, "checkpoint", "nothing"))
    assert "No space left on device (ENOSPC" in message and "free space on the filesystem" in message


def test_a_real_write_failure_without_root(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 200 kB (EFBIG) for any user, in a child process."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from odmar_mpi.checkpoint import CheckpointWriteError, save_checkpoint, load_checkpoint, local_steps
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        run = {str(tmp_path)!r}
        save_checkpoint(run, {RANK}, 100, {{"x": torch.zeros(1000)}}, keep=1)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(run, {RANK}, 200, {{f"k{{i}}": torch.rand(1000) for i in range(100)}}, keep=1)
        except CheckpointWriteError as err:
            print(err)
        print(local_steps(run, {RANK}), float(load_checkpoint(run, {RANK}, 100)["x"].sum()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith(f"rank {RANK}: cannot write checkpoint ")
    assert "File too large (EFBIG)" in lines[0] and "step 100) is intact" in lines[0]
    assert lines[1] == "[100] 0.0" and "Traceback" not in done.stderr
    assert leftovers(tmp_path / "checkpoints") == []


def test_a_failing_fill_removes_the_temp_file_and_propagates(tmp_path):
    target = tmp_path / "f.h5"

    def fill(f):
        f.create_dataset("x", data=np.zeros(10))
        raise TypeError("not storable")

    with pytest.raises(TypeError, match="not storable"):
        write_atomic_h5(target, fill)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- temp files


def test_remove_temporaries_removes_exactly_this_ranks_leftovers(tmp_path):
    checkpoints, records = tmp_path / "checkpoints", tmp_path / "records"
    checkpoints.mkdir()
    records.mkdir()
    mine = [checkpoints / ".rank0003_step000000200.h5.tmp4242", checkpoints / ".rank0003_step000000300.h5.tmp17",
            records / ".rank0003.h5.tmp4242"]
    others = [checkpoints / ".rank0030_step000000200.h5.tmp4242", checkpoints / ".rank0013_step000000200.h5.tmp1",
              records / ".rank0030.h5.tmp9", checkpoints / "rank0003_step000000100.h5", records / "rank0003.h5",
              checkpoints / ".probe3", tmp_path / ".rank0003.h5.tmp1"]
    for path in mine + others:
        path.write_bytes(b"x")
    removed = remove_temporaries(tmp_path, RANK)
    assert sorted(removed) == sorted(mine)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert remove_temporaries(tmp_path, RANK) == []
    assert remove_temporaries(tmp_path / "nothing-here", RANK) == []


def test_a_killed_writer_leaves_a_temp_file_that_remove_temporaries_clears(tmp_path):
    """A real leftover: a writer process killed (SIGKILL) in the middle of writing a checkpoint."""
    marker = tmp_path / f"started-{uuid.uuid4().hex}"
    script = textwrap.dedent(f"""
        import os, pathlib, signal, torch
        from odmar_mpi.checkpoint import save_checkpoint
        from odmar_mpi import h5tree
        original = h5tree.write_tree
        def slow(group, name, obj):
            original(group, name, obj)
            if isinstance(obj, str) and obj == "KILL":
                pathlib.Path({str(marker)!r}).touch()
                os.kill(os.getpid(), signal.SIGKILL)
        h5tree.write_tree = slow
        import odmar_mpi.checkpoint as c
        c.write_tree = slow
        save_checkpoint({str(tmp_path)!r}, {RANK}, 100, {{"x": torch.zeros(10)}}, keep=1)
        save_checkpoint({str(tmp_path)!r}, {RANK}, 200, {{"x": torch.zeros(10), "late": "KILL"}}, keep=1)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == -9 and marker.exists(), done.stderr
    left = leftovers(tmp_path / "checkpoints")
    assert len(left) == 1 and left[0].startswith(".rank0003_step000000200.h5.tmp")
    assert [p.name for p in remove_temporaries(tmp_path, RANK)] == left
    assert leftovers(tmp_path / "checkpoints") == [] and local_steps(tmp_path, RANK) == [100]
    assert verify_checkpoint(tmp_path, RANK, 100) is None
