"""The guard against a mis-wired launch: the launcher's announced task count against the MPI world size.

The environments below are the variables each launcher really set, as recorded under Slurm 22.05
with the PyPI mpich wheel (trimmed to the ones that matter); tests/test_slurm.py runs the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from odmar_mpi.launch_check import announced_size, check_world_size

ROOT = Path(__file__).resolve().parents[1]

# `srun -n 2 --mpi=pmi2 python ...` (each task: a rank of one 2-rank world)
SRUN_PMI2 = {"PMI_FD": "11", "PMI_JOBID": "4.0", "PMI_RANK": "0", "PMI_SIZE": "2", "SLURM_NPROCS": "2",
             "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1"}
# `srun -n 2 --mpi=none python ...` (each task: rank 0 of its own 1-rank world)
SRUN_NONE = {"SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_STEP_ID": "0",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1"}
# The venv's `mpiexec -n 2` inside a 2-task allocation: Hydra starts one proxy per node with srun.
MPIEXEC_IN_ALLOCATION = {"MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1", "PMI_FD": "6", "PMI_RANK": "1",
                         "PMI_SIZE": "2", "SLURM_NPROCS": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                         "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_TASKS_PER_NODE": "1"}
# `python -m odmar_mpi.run` straight from a 2-task batch script: no step, no process manager.
BATCH_SHELL = {"SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "6", "SLURM_TASKS_PER_NODE": "2",
               "SLURM_JOB_NUM_NODES": "1"}
# Open MPI's mpirun -n 4
OPEN_MPI = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}


@pytest.mark.parametrize("environ, world, expected", [
    (SRUN_PMI2, 2, ("PMI_SIZE", 2)),
    (SRUN_NONE, 1, ("SLURM_STEP_NUM_TASKS", 2)),
    (MPIEXEC_IN_ALLOCATION, 2, ("PMI_SIZE", 2)),
    (BATCH_SHELL, 1, None),
    (OPEN_MPI, 4, ("OMPI_COMM_WORLD_SIZE", 4)),
    ({}, 1, None),
], ids=["srun-pmi2", "srun-none", "mpiexec-in-allocation", "batch-shell", "open-mpi", "plain"])
def test_the_announcing_variable_is_the_one_of_the_launcher_that_started_the_process(environ, world, expected):
    assert announced_size(environ) == expected


@pytest.mark.parametrize("environ, world", [
    (SRUN_PMI2, 2), (MPIEXEC_IN_ALLOCATION, 2), (BATCH_SHELL, 1), (OPEN_MPI, 4), ({}, 1), ({}, 3),
    ({"MPI_LOCALNRANKS": "4"}, 1),  # one node's count, not the world's
    ({"SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_ID": "0"}, 1),
], ids=["srun-pmi2", "mpiexec-in-allocation", "batch-shell", "open-mpi", "plain", "plain-3",
        "local-count", "per-node-count"])
def test_a_wired_up_launch_passes(environ, world):
    assert check_world_size(world, environ) is None


def test_srun_without_mpi_wiring_is_refused_naming_the_plugin_and_the_fix():
    message = check_world_size(1, SRUN_NONE)
    assert message is not None
    assert message.startswith("the launcher started 2 processes (SLURM_STEP_NUM_TASKS=2) but this process's "
                              "MPI world has 1 rank: MPI is not wired up")
    for words in ("--mpi plugin", "--mpi=none", "srun --mpi=pmi2", "--mpi=pmix", "PMIx-enabled", "LAUNCHER=mpiexec",
                  "srun --mpi=list"):
        assert words in message, words


def test_a_pmi_launcher_of_another_mpi_is_refused_naming_mpiexec():
    message = check_world_size(1, {**SRUN_PMI2})
    assert message is not None and "(PMI_SIZE=2)" in message
    assert ".venv/bin/mpiexec" in message and "Get_library_version" in message
    assert "Open MPI's mpirun" in check_world_size(1, OPEN_MPI)


def test_slurm_counts_count_only_inside_a_job_step():
    # SLURM_NTASKS alone (an allocation's count) announces nothing; inside a step it is the step's count.
    assert announced_size({"SLURM_NTASKS": "4"}) is None
    assert announced_size({"SLURM_NTASKS": "4", "SLURM_STEP_ID": "3"}) == ("SLURM_NTASKS", 4)
    assert announced_size({"SLURM_NPROCS": "3", "SLURM_STEPID": "0"}) == ("SLURM_NPROCS", 3)
    assert check_world_size(1, {"SLURM_NTASKS": "4", "SLURM_STEP_ID": "3"}) is not None


@pytest.mark.parametrize("value", ["", "0", "x", "-2", "2(x2)"])
def test_a_variable_that_is_not_a_positive_count_is_ignored(value):
    assert announced_size({"PMI_SIZE": value}) is None
    assert announced_size({"PMI_SIZE": value, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}) == (
        "SLURM_STEP_NUM_TASKS", 2)


def test_more_ranks_than_announced_is_refused_too():
    message = check_world_size(4, {"PMI_SIZE": "2"})
    assert message is not None and "MPI world has 4 ranks" in message and "not wired up" not in message


def test_the_program_refuses_a_mis_wired_launch_with_exit_2_before_anything_else(tmp_path):
    """A singleton that srun --mpi=none would start (the step's variables, no PMI): exit 2, one message,
    no run folder. The real srun does the same in tests/test_slurm.py."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PMI_", "OMPI_", "MV2_", "SLURM_", "HYDRA", "MPI_LOCAL"))}
    env.update(SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="2", SLURM_PROCID="1")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "odmar_mpi.run", "--config", "configs/quick.toml", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("odmar_mpi.run: error: ")]
    assert errors == [f"odmar_mpi.run: error: {check_world_size(1, env)}"], result.stderr
    assert result.stdout == "" and not out.exists()
