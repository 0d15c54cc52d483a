"""The launch scripts in launch/: syntax, SLURM directives, and real runs through them.

The SLURM scripts run here unchanged on a stub cluster: `srun` and `scontrol` are small scripts
first on PATH (srun drops its --mpi and --kill-on-bad-exit options and starts the job with mpiexec;
scontrol only writes down how it was called), and the SLURM_* variables are set by hand.
`bash launch/slurm_cpu.sbatch` then does what a batch job does: its #SBATCH lines are comments to
bash. These tests start their own MPI jobs, so they run in the serial pass. tests/test_slurm.py
runs the same scripts on a real Slurm (make test-slurm).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odmar_mpi.checkpoint import local_steps

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SBATCH_SCRIPTS = sorted(LAUNCH.glob("*.sbatch"))
VENV = Path(sys.executable).parents[1]  # the environment running the tests runs the jobs too
RANKS = 2
JOB_ID = "4242"
JOB_NAME = "odmar-test"
# Every phase in a few seconds: warm-up 200 steps, model updates, imagination, SAC, evals, checkpoints every 250.
TINY = [
    "run.warmup_steps=200", "run.eval_every=100", "run.eval_episodes=1", "run.checkpoint_every=250",
    "env.episode_length=50", "model.num_inducing=32", "model.update_every=100", "model.rollout_batch=64",
    "sac.hidden=[32,32]", "sac.batch_size=32", "sac.updates_per_step=1", "sac.buffer_size=10000",
]


def set_args(overrides: list[str]) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


def directives(script: Path) -> list[list[str]]:
    """The options of each active `#SBATCH` line, split as sbatch does (an unquoted # starts a comment)."""
    return [shlex.split(line[len("#SBATCH"):], comments=True)
            for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def options(script: Path) -> dict[str, str]:
    """`--name=value` (or bare `--flag`, value "") of every #SBATCH line."""
    found = {}
    for words in directives(script):
        for word in words:
            name, _, value = word.partition("=")
            found[name] = value
    return found


# ---------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("script", sorted(LAUNCH.iterdir()), ids=lambda p: p.name)
def test_every_launch_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_directives_requeue_signal_every_rank_and_set_the_task_count(script):
    found = options(script)
    assert "--requeue" in found
    # "B:USR1@n" would signal only the batch shell; the ranks must get it to checkpoint.
    assert re.fullmatch(r"USR1@\d+", found.get("--signal", "")), found.get("--signal")
    assert re.fullmatch(r"[1-9]\d*", found.get("--ntasks", "")), found.get("--ntasks")
    assert 'source "$SLURM_SUBMIT_DIR/launch/slurm_job.sh"' in script.read_text()


def test_the_shared_job_body_starts_the_ranks_with_srun_or_mpiexec_and_requeues():
    body = (LAUNCH / "slurm_job.sh").read_text()
    assert re.search(r'^\s*srun\) launch=\(srun --mpi="\$SRUN_MPI" --kill-on-bad-exit=1\) ;;$', body, re.MULTILINE)
    assert re.search(r'^\s*mpiexec\) launch=\("\$VENV/bin/mpiexec" -n "\$SLURM_NTASKS"\) ;;$', body, re.MULTILINE)
    assert re.search(r'^"\$\{launch\[@\]\}" "\$VENV/bin/python" -m odmar_mpi\.run ', body, re.MULTILINE)
    assert re.search(r'^\s*scontrol requeue "\$SLURM_JOB_ID"$', body, re.MULTILINE)


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_defaults_start_the_projects_own_mpich_wheel_and_keep_the_log_of_a_requeued_job(script):
    # The PyPI mpich wheel has no PMIx client: srun --mpi=pmix makes every rank abort (exit 16).
    text = script.read_text()
    assert "export SRUN_MPI=${SRUN_MPI:-pmi2}" in text and "export LAUNCHER=${LAUNCHER:-srun}" in text
    assert "SRUN_MPI=${SRUN_MPI:-pmi2}" in (LAUNCH / "slurm_job.sh").read_text()
    # Without append Slurm truncates the log when the requeued job starts: the first attempt's lines are lost.
    assert options(script).get("--open-mode") == "append"


def test_gpu_script_binds_one_gpu_per_rank():
    assert options(LAUNCH / "slurm_gpu.sbatch").get("--gpus-per-task") == "1"


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_placeholders_are_commented_out_and_directives_come_first(script):
    lines = script.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if "CHANGE_ME" in line:
            assert line.startswith("##SBATCH"), f"{script.name}:{number}: active placeholder: {line}"
    # sbatch stops reading #SBATCH lines at the first command: every directive must come before it.
    first_command = next(k for k, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    late = [line for line in lines[first_command:] if line.startswith("#SBATCH")]
    assert not late, f"{script.name}: directives after the first command are ignored by sbatch: {late}"


# ---------------------------------------------------------------------------- a job on a stub cluster


@pytest.fixture
def cluster(tmp_path) -> dict[str, str]:
    """Environment of a batch job on a stub cluster whose srun runs mpiexec and whose scontrol logs its calls."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    srun = stubs / "srun"
    srun.write_text('#!/usr/bin/env bash\n'
                    'echo "$*" >> "$SRUN_LOG"\n'
                    'args=()\n'
                    'for arg in "$@"; do [[ $arg == --mpi=* || $arg == --kill-on-bad-exit* ]] || args+=("$arg"); done\n'
                    'exec "$MPIEXEC" -n "$SLURM_NTASKS" "${args[@]}"\n')
    scontrol = stubs / "scontrol"
    scontrol.write_text('#!/usr/bin/env bash\necho "$*" >> "$SCONTROL_LOG"\n')
    for stub in (srun, scontrol):
        stub.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "MPIEXEC": str(VENV / "bin" / "mpiexec"),
        "SRUN_LOG": str(tmp_path / "srun.log"),
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": JOB_NAME,
        "SLURM_NTASKS": str(RANKS),
        "VENV": str(VENV),
        "RUN_ROOT": str(tmp_path / "runs"),
        "CONFIG": "configs/quick.toml",
    }


def calls(log: str) -> list[str]:
    path = Path(log)
    return path.read_text().splitlines() if path.exists() else []


def test_slurm_job_stops_on_usr1_requeues_then_resumes_and_completes(cluster):
    run_dir = Path(cluster["RUN_ROOT"]) / f"{JOB_NAME}-{JOB_ID}"
    script = str(LAUNCH / "slurm_cpu.sbatch")
    # The body splits EXTRA_ARGS on whitespace and removes no quotes: no value here may hold a space or a quote.
    first_env = {**cluster, "EXTRA_ARGS": " ".join(set_args(TINY + ["run.train_steps=100000"]))}
    job = subprocess.Popen(["bash", script], cwd=ROOT, env=first_env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # generous: the machine may be shared
        while not all(local_steps(run_dir, r) for r in range(RANKS)) and job.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint from every rank within 120 s"
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it was signalled:\n" + "".join(job.communicate())
        # Only the ranks are python processes started as "$VENV/bin/python -m odmar_mpi.run" (not mpiexec).
        pattern = f"^{re.escape(str(VENV))}/bin/python -m odmar_mpi.run .*--out {re.escape(str(run_dir))}"
        ranks = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        assert len(ranks) == RANKS, f"expected {RANKS} rank processes, found {ranks}"
        os.kill(int(ranks[-1]), signal.SIGUSR1)  # one rank only: the others learn of it by gossip
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, out + err
    newest = [local_steps(run_dir, r)[-1] for r in range(RANKS)]
    assert len(set(newest)) == 1, f"ranks stopped at different steps: {newest}"
    stopped = newest[0]
    assert f"stopped on request at step {stopped}" in out
    assert not (run_dir / "COMPLETE").exists()
    assert calls(cluster["SCONTROL_LOG"]) == [f"requeue {JOB_ID}"]
    assert calls(cluster["SRUN_LOG"])[0].startswith("--mpi=pmi2 --kill-on-bad-exit=1 ")

    # The requeued job: same id and name, so it finds the folder and resumes; a budget ending 20 steps later.
    second_env = {**cluster, "EXTRA_ARGS": " ".join(set_args([f"run.train_steps={stopped - 200 + 20}"])),
                  "SLURM_RESTART_COUNT": "1"}
    second = subprocess.run(["bash", script], cwd=ROOT, env=second_env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming {run_dir} from step {stopped}" in second.stdout
    assert "--resume" in calls(cluster["SRUN_LOG"])[1] and "--config" not in calls(cluster["SRUN_LOG"])[1]
    assert (run_dir / "COMPLETE").read_text().strip() == str(stopped + 20)
    assert calls(cluster["SCONTROL_LOG"]) == [f"requeue {JOB_ID}"]  # not again: the run is complete


def test_slurm_job_refuses_an_unknown_launcher(cluster):
    result = subprocess.run(["bash", str(LAUNCH / "slurm_cpu.sbatch")], cwd=ROOT, env={**cluster, "LAUNCHER": "mpirun"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LAUNCHER=mpirun: use srun" in result.stderr
    assert calls(cluster["SRUN_LOG"]) == [] and calls(cluster["SCONTROL_LOG"]) == []


def test_slurm_job_that_fails_is_not_requeued(cluster):
    bad = {**cluster, "EXTRA_ARGS": "--set model.beta=-1"}
    result = subprocess.run(["bash", str(LAUNCH / "slurm_cpu.sbatch")], cwd=ROOT, env=bad,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model.beta = -1.0 is out of range" in result.stderr
    assert f"the ranks failed (exit 2); not requeueing job {JOB_ID}" in result.stdout
    assert calls(cluster["SCONTROL_LOG"]) == []


# ---------------------------------------------------------------------------- launch/local.sh


def local(*args: str, venv: Path = VENV) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / "local.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "ODMAR_VENV": str(venv)}, timeout=120)


def test_local_launcher_runs_and_names_the_run_folder_last(tmp_path):
    out = tmp_path / "x"
    result = local(str(RANKS), "--config", "configs/quick.toml", "--out", str(out),
                   *set_args(TINY + ["run.train_steps=50"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"run folder: {out}"
    assert (out / "COMPLETE").read_text().strip() == "250"


@pytest.mark.parametrize("args", [(), ("--config", "configs/quick.toml"), ("0",)], ids=["none", "option", "zero"])
def test_local_launcher_without_a_rank_count_prints_usage_and_exits_2(args):
    result = local(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: launch/local.sh N")


def test_local_launcher_refuses_a_missing_environment(tmp_path):
    result = local("2", venv=tmp_path / "no-venv")
    assert result.returncode == 2
    assert f"no virtual environment at {tmp_path / 'no-venv'}" in result.stderr


def test_local_launcher_passes_on_the_run_exit_status():
    result = local(str(RANKS), "--set", "model.beta=-1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model.beta = -1.0 is out of range" in result.stdout  # local.sh merges the run's stderr into stdout
