"""The SLURM scripts in launch/ on a real Slurm (not a stub): `make test-slurm`.

A one-node cluster of our own (tests/slurm_cluster.py: munged, slurmctld, slurmd in a temporary
folder; Debian's slurm-wlm and munge installed when missing) runs launch/slurm_cpu.sbatch as
shipped, sized to 2 ranks and given a tiny config:

- a launch that does not wire MPI up (`srun --mpi=none`): each singleton refuses with exit 2 (srun's
  --kill-on-bad-exit may end the slower one first), and the job is not requeued;
- the default launch (`srun --mpi=pmi2`, the PyPI mpich wheel): a 2-rank world; USR1 to every rank
  (`scancel -s USR1`, what `--signal=USR1@N` does) stops all at one agreed step, the job requeues
  itself, resumes from that step in the same folder and completes;
- the venv's own mpiexec inside the allocation (LAUNCHER=mpiexec): a 2-rank world; the script's own
  `--signal=USR1@120` (made due by shortening the time limit) stops it, it requeues and resumes
  (then USR1 stops it again and it is cancelled while it waits);
- launch/slurm_gpu.sbatch, as shipped, is accepted (`sbatch --test-only`) by a partition of 8-GPU
  nodes (a node line with Gres=gpu:8; there is no GPU here, so it is never run);
- a sweep (`python -m odmar_mpi.sweep ... --slurm`) of one setting x 2 seeds goes in as one job array of
  launch/sweep.sbatch, every task completes its run folder, and `report --compare --json` on the sweep
  folder gives the IQM over the seeds with its bootstrap interval.

Marked `slurm`: the ordinary `make test` does not run it. Skips, naming the reason, without root or
without a way to install Slurm. Each test prints its job ids, states and the job's log (`-rP`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odmar_mpi.checkpoint import local_steps
from slurm_cluster import GPU_PARTITION, CannotRun, Cluster, wait_for, which

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
RANKS = 2
JOB_NAME = "odmar"  # the script's --job-name; the run folder is RUN_ROOT/odmar-<job id>
TINY = [
    "run.warmup_steps=200", "run.eval_every=100", "run.eval_episodes=1", "run.checkpoint_every=250",
    "env.episode_length=50", "model.num_inducing=32", "model.update_every=100", "model.rollout_batch=64",
    "sac.hidden=[32,32]", "sac.batch_size=32", "sac.updates_per_step=1", "sac.buffer_size=10000",
]
STARTUP_S = 600  # until every rank has checkpointed: imports and 250 steps; minutes on a busy 2-core machine
FINISH_S = 600


def extra_args(overrides: list[str]) -> str:
    return " ".join(word for item in overrides for word in ("--set", item))


@pytest.fixture(scope="module")
def cluster(request):
    if "slurm" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("starts Slurm daemons (and may install slurm-wlm): run it with make test-slurm or pytest -m slurm")
    if not (VENV / "bin" / "python").exists():
        pytest.skip(f"no project environment at {VENV} (run make install)")
    try:
        with Cluster.started() as running:  # CannotRun comes, if at all, before anything is started
            yield running
    except CannotRun as why:
        pytest.skip(f"no real Slurm here: {why}")


class Job:
    """One submission of launch/slurm_cpu.sbatch (or _gpu) to the test cluster, with its log files."""

    def __init__(self, cluster: Cluster, script: str, env: dict[str, str], args: tuple[str, ...] = ()):
        self.cluster = cluster
        logs = cluster.folder / "jobs"
        logs.mkdir(exist_ok=True)
        self.run_root = cluster.folder / "runs"
        memory = [] if cluster.memory_mb >= RANKS * 4096 else [f"--mem-per-cpu={cluster.memory_mb // (2 * RANKS)}M"]
        self.started = time.monotonic()
        # Only the size and the log paths change; every other directive is the script's own.
        self.id = cluster.sbatch(
            [f"--ntasks={RANKS}", *memory, f"--output={logs}/%x-%j.out", f"--error={logs}/%x-%j.err", *args,
             f"launch/{script}"],
            env={"VENV": str(VENV), "RUN_ROOT": str(self.run_root), "CONFIG": "configs/quick.toml", **env},
            cwd=ROOT)
        self.out = logs / f"{JOB_NAME}-{self.id}.out"
        self.err = logs / f"{JOB_NAME}-{self.id}.err"
        self.run_dir = self.run_root / f"{JOB_NAME}-{self.id}"
        self.states: list[str] = []

    def record(self) -> dict[str, str]:
        found = self.cluster.job(self.id)
        state = found.get("JobState", "?")
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        return found

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def report(self) -> str:
        found = self.cluster.job(self.id)
        fields = " ".join(f"{k}={found.get(k, '?')}" for k in ("JobState", "Reason", "Restarts", "ExitCode", "RunTime"))
        return (f"job {self.id}: {fields}; states seen {' -> '.join(self.states)}\n"
                f"--- {self.out.name}\n{self.stdout()}--- {self.err.name}\n{self.stderr()}")

    def wait(self, predicate, timeout: float, what: str):
        def check():
            self.record()
            return predicate()
        return wait_for(check, timeout, f"job {self.id}: {what}", interval=0.2,
                        on_timeout=lambda: self.report() + "\n" + self.cluster.diagnostics())

    def wait_state(self, states: set[str], timeout: float) -> dict[str, str]:
        return self.wait(lambda: self.record() if self.record().get("JobState") in states else None,
                         timeout, f"state in {sorted(states)}")

    def checkpointed(self) -> bool:
        return all(local_steps(self.run_dir, rank) for rank in range(RANKS))

    def newest_steps(self) -> list[int]:
        return [local_steps(self.run_dir, rank)[-1] for rank in range(RANKS)]

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f} s"


def test_gpu_script_as_shipped_is_accepted_by_a_partition_of_gpu_nodes(cluster):
    """8 ranks, one GPU and 4 CPUs each: Slurm's own check against a node line with Gres=gpu:8.
    Untested on real GPUs: nothing here runs CUDA."""
    accepted = cluster.run(["sbatch", "--test-only", f"--partition={GPU_PARTITION}", "launch/slurm_gpu.sbatch"],
                           check=False, cwd=ROOT)
    said = (accepted.stdout + accepted.stderr).strip()
    print(f"sbatch --test-only --partition={GPU_PARTITION} launch/slurm_gpu.sbatch -> {accepted.returncode}: {said}")
    assert accepted.returncode == 0, said
    assert re.search(r"to start at \S+ using 32 processors on nodes gpunode1 in partition gpu", said), said
    # The GPUs are really weighed: one rank more than the node has GPUs does not fit.
    refused = cluster.run(["sbatch", "--test-only", f"--partition={GPU_PARTITION}", "--ntasks=9",
                           "launch/slurm_gpu.sbatch"], check=False, cwd=ROOT)
    said = (refused.stdout + refused.stderr).strip()
    print(f"... --ntasks=9 -> {refused.returncode}: {said}")
    assert refused.returncode != 0 and "Requested node configuration is not available" in said, said


def test_a_launch_that_does_not_wire_mpi_up_is_refused_by_every_rank_with_exit_2(cluster):
    job = Job(cluster, "slurm_cpu.sbatch", {"SRUN_MPI": "none", "EXTRA_ARGS": extra_args(TINY)})
    found = job.wait_state({"FAILED", "COMPLETED", "CANCELLED", "TIMEOUT"}, FINISH_S)
    print(job.report())
    # The job's exit code is srun's: 2, or 143 when --kill-on-bad-exit ended the slower singleton first.
    assert found["JobState"] == "FAILED" and found["ExitCode"] in ("2:0", "143:0"), job.report()
    assert found["Restarts"] == "0" and f"not requeueing job {job.id}" in job.stdout(), job.report()
    refusals = [line for line in job.stderr().splitlines() if line.startswith("odmar_mpi.run: error: ")]
    # srun --mpi=none starts 2 singletons, each rank 0 of its own world: each refuses once (--kill-on-bad-exit
    # may end the second before it says so).
    assert 1 <= len(refusals) <= RANKS, job.report()
    for line in refusals:
        assert line.startswith("odmar_mpi.run: error: the launcher started 2 processes (SLURM_STEP_NUM_TASKS=2) "
                               "but this process's MPI world has 1 rank: MPI is not wired up"), line
        assert "srun --mpi=pmi2" in line and "LAUNCHER=mpiexec" in line, line
    assert re.search(r"srun: error: \S+: tasks? [0-9-]+: Exited with exit code 2$", job.stderr(), re.MULTILINE), \
        job.report()
    assert not (job.run_dir / "config.toml").exists(), job.report()  # refused before anything else


def test_default_launch_stops_on_usr1_at_one_step_requeues_resumes_and_completes(cluster):
    train_steps = 800  # long enough to be signalled at the first checkpoint (step 250), short enough to finish
    job = Job(cluster, "slurm_cpu.sbatch", {"EXTRA_ARGS": extra_args(TINY + [f"run.train_steps={train_steps}"])})
    job.wait(job.checkpointed, STARTUP_S, "a checkpoint from every rank")
    signalled = job.elapsed()
    # Without --batch: every task of every step gets it, not the batch shell, as with --signal=USR1@N.
    cluster.run(["scancel", "--signal=USR1", job.id])
    job.wait(lambda: job.record().get("Restarts") == "1", FINISH_S, "requeue (Restarts=1)")
    requeued = job.elapsed()
    newest = job.newest_steps()  # before the requeued job writes more (older checkpoints are pruned later)
    found = job.wait_state({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, FINISH_S)
    print(f"signalled at {signalled}, requeued at {requeued}, ended at {job.elapsed()} after submission")
    print(job.report())
    assert found["JobState"] == "COMPLETED" and found["Restarts"] == "1" and found["ExitCode"] == "0:0", job.report()
    out = job.stdout()
    stopped = int(re.search(r"stopped on request at step (\d+)", out).group(1))
    # Every rank checkpointed at the agreed step; the resumed run started from it; the run is complete.
    assert newest == [stopped] * RANKS, (newest, job.report())
    assert f"run folder {job.run_dir}: {RANKS} agents" in out, job.report()  # the MPI world: 2 ranks
    assert f"resuming {job.run_dir} from step {stopped} with {RANKS} agents" in out, job.report()
    assert (job.run_dir / "COMPLETE").read_text().strip() == str(200 + train_steps)
    # --open-mode=append: the first attempt's lines survive the requeue, in order.
    order = [f"job {job.id} (restart 0): {RANKS} ranks by srun --mpi=pmi2 --kill-on-bad-exit=1, run folder {job.run_dir}",
             f"stopped on request at step {stopped}", f"requeueing job {job.id}",
             f"job {job.id} (restart 1): {RANKS} ranks by srun --mpi=pmi2 --kill-on-bad-exit=1",
             f"resuming {job.run_dir} from step {stopped}", f"run complete: {job.run_dir}"]
    positions = [out.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), (positions, job.report())


def test_venv_mpiexec_launch_stops_on_the_scripts_time_limit_signal_requeues_and_resumes(cluster):
    """The run never completes here (100000 steps): stopped by the time-limit signal, resumed, stopped again."""
    job = Job(cluster, "slurm_cpu.sbatch", {"LAUNCHER": "mpiexec",
                                            "EXTRA_ARGS": extra_args(TINY + ["run.train_steps=100000"])})
    job.wait(job.checkpointed, STARTUP_S, "a checkpoint from every rank")
    assert f"ranks by {VENV}/bin/mpiexec -n {RANKS}," in job.stdout(), job.report()
    assert f"run folder {job.run_dir}: {RANKS} agents" in job.stdout(), job.report()
    # Leave it between 1 and 2 minutes: the script's --signal=USR1@120 is due; Slurm sends it at its next
    # time-limit pass (every 30 s or so: the signal may come up to a minute earlier than asked).
    minutes = int(job.record()["RunTime"].split(":")[-2]) + 2  # RunTime is [D-]HH:MM:SS; far below an hour here
    cluster.run(["scontrol", "update", f"JobId={job.id}", f"TimeLimit={minutes}"])
    limited = job.elapsed()
    job.wait(lambda: job.record().get("Restarts") == "1", 180, "requeue after the time-limit signal")
    requeued = job.elapsed()
    newest = job.newest_steps()
    # Give the requeued job its time back before it starts again (it waits cred_expire, 10 s here).
    cluster.run(["scontrol", "update", f"JobId={job.id}", "TimeLimit=04:00:00"])
    stopped = int(re.search(r"stopped on request at step (\d+)", job.stdout()).group(1))
    job.wait(lambda: f"resuming {job.run_dir} from step {stopped} with {RANKS} agents" in job.stdout(),
             STARTUP_S, "the requeued job to resume")
    resumed = job.elapsed()
    # Stop the resumed run cleanly too (USR1 by hand, once it trains again), then cancel it while it waits:
    # killed ranks would leave their shared memory behind in /dev/shm.
    job.wait(lambda: min(job.newest_steps()) > stopped, STARTUP_S, "a checkpoint of the resumed run")
    cluster.run(["scancel", "--signal=USR1", job.id])
    job.wait(lambda: job.record().get("Restarts") == "2", FINISH_S, "the second requeue")
    again = job.newest_steps()
    cluster.run(["scancel", job.id])
    job.wait_state({"CANCELLED", "COMPLETED", "FAILED"}, 120)
    print(f"time limit shortened at {limited}, requeued at {requeued}, resumed at {resumed} after submission")
    print(job.report())
    assert newest == [stopped] * RANKS, (newest, job.report())
    out = job.stdout()
    second = int(re.findall(r"stopped on request at step (\d+)", out)[-1])
    assert again == [second] * RANKS and second > stopped, (again, job.report())
    order = [f"job {job.id} (restart 0)", f"stopped on request at step {stopped}", f"requeueing job {job.id}",
             f"job {job.id} (restart 1)", f"resuming {job.run_dir} from step {stopped}",
             f"stopped on request at step {second}"]
    positions = [out.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), (positions, job.report())


def test_a_sweep_runs_as_one_job_array_and_compares(cluster):
    """One setting x 2 seeds: `python -m odmar_mpi.sweep --slurm` submits one array of launch/sweep.sbatch (the
    options after --slurm pass through to sbatch), each task runs its (setting, seed) to completion in the sweep's
    folder, and the comparison over the seeds comes from those folders."""
    from odmar_mpi.report.compare import bootstrap_ci, iqm
    from odmar_mpi.report.summary import summarise

    out = cluster.folder / "sweep"
    logs = cluster.folder / "jobs"
    logs.mkdir(exist_ok=True)
    memory = [] if cluster.memory_mb >= RANKS * 4096 else [f"--mem-per-cpu={cluster.memory_mb // (2 * RANKS)}M"]
    setting = "tiny=configs/quick.toml;" + ";".join([*TINY, "run.train_steps=300"])
    env = {**cluster.env, "VENV": str(VENV), "PATH": f"{Path(which('sbatch')).parent}:{cluster.env['PATH']}"}
    submitted = subprocess.run(
        [sys.executable, "-m", "odmar_mpi.sweep", "--setting", setting, "--seeds", "0-1", "--ranks", str(RANKS),
         "--out", str(out), "--slurm", *memory, f"--output={logs}/%x-%A_%a.out", f"--error={logs}/%x-%A_%a.err"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    print(submitted.stdout + submitted.stderr)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"submitted job array (\d+): 2 of 2 runs", submitted.stdout).group(1)
    assert f"python -m odmar_mpi.report {out} --compare" in submitted.stdout
    tasks = [f"{job}_{index}" for index in (0, 1)]

    def states() -> list[str]:
        return [cluster.job(task).get("JobState", "?") for task in tasks]

    def log(index: int, kind: str) -> str:
        path = logs / f"odmar-sweep-{job}_{index}.{kind}"
        return path.read_text(errors="replace") if path.exists() else ""

    def reports() -> str:
        return "\n".join(f"--- task {i}: {states()[i]}\n{log(i, 'out')}{log(i, 'err')}" for i in (0, 1))

    wait_for(lambda: all(state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for state in states()),
             2 * FINISH_S, f"array {job} to finish", interval=1, on_timeout=lambda: reports() + cluster.diagnostics())
    print(reports())
    assert states() == ["COMPLETED", "COMPLETED"], reports()
    for seed in (0, 1):
        run_dir = out / "tiny" / f"seed{seed}"
        assert (run_dir / "COMPLETE").read_text().strip() == "500", reports()
        assert f"run folder {run_dir}: {RANKS} agents" in log(seed, "out"), reports()  # task i = seed i here
        assert summarise(run_dir)["seed"] == seed
    compared = subprocess.run([sys.executable, "-m", "odmar_mpi.report", str(out), "--compare", "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr
    [tiny] = json.loads(compared.stdout)["settings"]
    print(json.dumps({key: tiny[key] for key in ("name", "figure", "seeds", "iqm", "ci95")}))
    finals = [summarise(out / "tiny" / f"seed{seed}")["final_optimal_share"] for seed in (0, 1)]
    assert tiny["seeds"] == [0, 1] and [p["final"] for p in tiny["per_seed"]] == finals
    assert tiny["iqm"] == iqm(finals) and tiny["ci95"] == list(bootstrap_ci(finals))
    # Submitted again, the sweep finds every run complete and submits nothing.
    again = subprocess.run([sys.executable, "-m", "odmar_mpi.sweep", "--out", str(out), "--slurm"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "every run of" in again.stdout and "nothing to submit" in again.stdout, again.stdout
