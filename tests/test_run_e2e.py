"""The real entry point, `mpiexec -n 2 python -m odmar_mpi.run`, on a tiny config: files, numbers, resume, refusals.

These tests start their own MPI job (so they run in the serial pass) and read what it wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from odmar_mpi.checkpoint import load_checkpoint, local_steps
from odmar_mpi.records import read_records, records_path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
RANKS = 2
# Small enough to finish in seconds; still every phase: warm-up, model updates, imagination, SAC, evals, checkpoints.
TINY = [
    "run.warmup_steps=200", "run.train_steps=300", "run.eval_every=100", "run.eval_episodes=1",
    "run.checkpoint_every=250", "env.episode_length=50", "model.num_inducing=32", "model.update_every=100",
    "model.rollout_batch=64", "sac.hidden=[32, 32]", "sac.batch_size=32", "sac.updates_per_step=2",
    "sac.buffer_size=10000", "comm.algorithm=finite-time", "comm.rounds=0", "comm.timeout_s=60",
]


def run_job(*args: str, overrides: list[str] = TINY, ranks: int = RANKS, cwd: Path = ROOT,
            timeout: float = 300) -> subprocess.CompletedProcess:
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "odmar_mpi.run", *args]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def learning_state(run_dir: Path, rank: int, step: int) -> dict:
    """A rank's checkpoint without its wall-clock timings, the only part that may differ between runs."""
    state = load_checkpoint(run_dir, rank, step)
    del state["telemetry"]["records"]["timing"], state["telemetry"]["clock"]
    return state


def assert_same_tree(a, b, where: str = "") -> None:
    """Exact equality of nested checkpoint state (tensors and arrays bit for bit)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), where


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    result = run_job("--out", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result


def test_short_run_writes_records_checkpoints_summary_and_plot(finished_run):
    run_dir, result = finished_run
    assert (run_dir / "config.toml").is_file() and (run_dir / "COMPLETE").read_text().strip() == "500"
    for rank in range(RANKS):
        tables, attrs = read_records(records_path(run_dir, rank))
        assert attrs["rank"] == rank and attrs["agents"] == RANKS and "num_inducing = 32" in attrs["config"]
        # Evaluations when warm-up ends and every 100 steps after: 200, 300, 400, 500.
        np.testing.assert_array_equal(tables["eval"]["step"], [200, 300, 400, 500])
        # Model updates every 100 steps from the end of warm-up, each exact in K finite-time rounds.
        np.testing.assert_array_equal(tables["model"]["step"], [200, 300, 400, 500])
        assert (tables["model"]["consensus_rounds"] >= 1).all()
        assert np.isfinite(tables["model"]["holdout_rmse"]).all()
        assert local_steps(run_dir, rank) == [250, 500]
    assert "team eval return" in result.stdout and "final team return" in result.stdout.lower()
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_team_reward_by_consensus_is_the_sum_of_the_agents_own_rewards(finished_run):
    run_dir, _ = finished_run
    tables = [read_records(records_path(run_dir, rank))[0] for rank in range(RANKS)]
    own_episode_sum = sum(t["episodes"]["own_return"] for t in tables)
    own_eval_sum = sum(t["eval"]["own_return"] for t in tables)
    for t in tables:
        # round-off of a K-round finite-time average times N: a few ulps of the per-step rewards
        np.testing.assert_allclose(t["episodes"]["return"], own_episode_sum, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(t["eval"]["team_return"], own_eval_sum, rtol=1e-12, atol=1e-9)
    assert not np.allclose(tables[0]["episodes"]["own_return"], own_episode_sum)  # the agents' shares differ


def test_resume_continues_bit_identically(finished_run, tmp_path):
    full_dir, _ = finished_run
    part_dir = tmp_path / "part"
    # Stop after the checkpoint at 250 (a 50-step training budget), then resume with the full budget.
    first = run_job("--out", str(part_dir), overrides=TINY + ["run.train_steps=50"])
    assert first.returncode == 0, first.stderr
    second = run_job("--resume", str(part_dir), overrides=["run.train_steps=300"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming {part_dir} from step 250" in second.stdout
    for rank in range(RANKS):
        assert_same_tree(learning_state(full_dir, rank, 500), learning_state(part_dir, rank, 500), f"rank {rank}")


def test_a_signal_on_one_rank_stops_every_rank_at_one_checkpointed_step(tmp_path):
    run_dir = tmp_path / "signalled"
    command = [MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "odmar_mpi.run", "--out", str(run_dir)]
    for item in TINY + ["run.train_steps=100000"]:  # far longer than the test waits
        command += ["--set", item]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not local_steps(run_dir, 1) and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)  # the first checkpoint (step 250) proves rank 1 is training
    pid = subprocess.run(["pgrep", "-f", f"odmar_mpi.run --out {run_dir}"], capture_output=True, text=True).stdout.split()
    assert pid, "no rank found to signal"
    os.kill(int(pid[-1]), signal.SIGUSR1)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, out + err
    stopped = [local_steps(run_dir, rank)[-1] for rank in range(RANKS)]
    assert len(set(stopped)) == 1, f"ranks stopped at different steps: {stopped}"
    assert f"stopped on request at step {stopped[0]}" in out and not (run_dir / "COMPLETE").exists()
    # The stop checkpoint resumes: 20 more steps, then complete.
    resumed = run_job("--resume", str(run_dir), overrides=[f"run.train_steps={stopped[0] - 200 + 20}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"from step {stopped[0]}" in resumed.stdout and (run_dir / "COMPLETE").exists()


@pytest.mark.parametrize(
    "args, overrides, message",
    [
        ((), ["model.beta=-1"], "model.beta = -1.0 is out of range"),
        ((), ["comm.topology=hypercube"], "hypercube"),  # 2 ranks fit a hypercube; 3 do not (below)
        (("--resume", "/nonexistent/run"), [], "no run there"),
        (("--out", "/proc/odmar-cannot-write"), TINY, "cannot write to run folder"),
        ((), ["model.num_inducing=200000"], "or less (now 200000; memory grows as M^2)"),
    ],
)
def test_bad_input_exits_2_on_every_rank_before_training(args, overrides, message, tmp_path):
    ranks = 3 if overrides == ["comm.topology=hypercube"] else RANKS
    result = run_job(*args, overrides=overrides, ranks=ranks, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_with_another_rank_count_is_refused_with_the_right_number(finished_run):
    run_dir, _ = finished_run
    result = run_job("--resume", str(run_dir), overrides=[], ranks=3, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("error:") == 1  # one message per job, not one per rank
    assert f"the run was made with {RANKS} ranks (one per agent) and this job has 3; relaunch with {RANKS} ranks" in result.stderr


def test_usage_errors_and_non_finite_settings_are_refused_once_per_job(tmp_path):
    result = run_job("--bogus", overrides=[], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.count("No such option '--bogus'") == 1
    result = run_job(overrides=["model.noise_var=inf"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert "model.noise_var = inf is not a finite number; allowed: > 0" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_an_older_common_step(finished_run, tmp_path):
    full_dir, _ = finished_run
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(full_dir), str(broken)], check=True)
    (broken / "COMPLETE").unlink()
    victim = broken / "checkpoints" / "rank0001_step000000500.h5"
    victim.write_bytes(b"not an hdf5 file")
    result = run_job("--resume", str(broken), overrides=["run.train_steps=350"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rank 1: checkpoint {victim}" in result.stderr  # named by rank and file
    assert "resuming from step 250, the newest step every rank can load" in result.stderr
    assert f"resuming {broken} from step 250" in result.stdout
    # From the fallback the run redoes steps 250..500 exactly as before, then goes on to 550.
    for rank in range(RANKS):
        assert_same_tree(learning_state(full_dir, rank, 500), learning_state(broken, rank, 500), f"rank {rank}")


def test_a_checkpoint_that_does_not_fit_this_version_is_refused_clearly(finished_run, tmp_path):
    full_dir, _ = finished_run
    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(full_dir), str(other)], check=True)
    (other / "COMPLETE").unlink()
    for path in (other / "checkpoints").glob("*.h5"):  # as if written by a version whose node had no telemetry part
        with h5py.File(path, "r+") as f:
            f["state"].attrs["keys"] = f["state"].attrs["keys"].replace('"telemetry"', '"telemetry_v0"')
    result = run_job("--resume", str(other), overrides=["run.train_steps=350"], timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("error:") == 1
    assert "does not fit this version of odmar_mpi" in result.stderr and "start a new run with --out" in result.stderr


def test_a_full_disk_during_a_run_is_one_clear_line_and_the_previous_checkpoint_survives(finished_run, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that really fills up")
    full_dir, _ = finished_run
    # Room for what the same run writes up to its checkpoint at 250, and half of one checkpoint more:
    # the checkpoint at 500 cannot fit (runs are deterministic, so the finished run's files give the sizes).
    files = [p for p in full_dir.rglob("*") if p.is_file() and "step000000500" not in p.name and p.suffix != ".png"]
    later = min(p.stat().st_size for p in (full_dir / "checkpoints").glob("*step000000500.h5"))
    size_kb = (sum(p.stat().st_size for p in files) + later // 2) // 1024 + 64
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = run_job("--out", str(disk / "run"), timeout=300)
        assert result.returncode != 0, result.stdout
        lines = [line for line in result.stderr.splitlines() if "No space left on device" in line]
        assert lines and "cannot write" in lines[0] and "Nothing lost" in lines[0], result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        for rank in range(RANKS):
            assert 250 in local_steps(disk / "run", rank)  # the previous checkpoint survives and loads
            assert load_checkpoint(disk / "run", rank, 250)["node"]["step"] == 250
    finally:
        subprocess.run(["umount", "-l", str(disk)])
