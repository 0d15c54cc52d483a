"""Refuse a launch whose MPI world is not the set of processes the launcher started.

When MPI is not wired up between the processes a launcher starts (`srun --mpi=none`, or a PMI
plugin the MPI library does not speak), each process initialises MPI alone: N runs of one agent
each, all rank 0, all writing into the same run folder. The launcher's own variables still say how
many processes it started; this module compares that count with the MPI world size.

Which variables announce the count, as measured under Slurm 22.05 with the PyPI `mpich` wheel:

- The process manager that started this very process (Hydra's mpiexec, Intel MPI, srun's pmi/pmi2
  plugin: `PMI_SIZE`; Open MPI's mpirun: `OMPI_COMM_WORLD_SIZE`; MVAPICH2: `MV2_COMM_WORLD_SIZE`).
  These win over Slurm's variables: the venv's `mpiexec -n 2` inside an allocation starts its
  proxies with `srun -n <nodes>`, so its ranks see `PMI_SIZE=2` but `SLURM_STEP_NUM_TASKS=1` and
  `SLURM_NTASKS=1`.
- Otherwise a Slurm job step (`srun`, with any `--mpi`; `SLURM_STEP_ID` is set):
  `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS` / `SLURM_NPROCS` (srun sets them to the step's count).
  `srun --mpi=none` and `--mpi=pmix` set no size of their own (PMIx exports `PMIX_RANK` only).
- Not Slurm's variables outside a step: in an `sbatch`/`salloc` shell `SLURM_NTASKS` is the
  allocation's task count, not a count of processes started, so a lone `python -m odmar_mpi.run`
  there (a 1-agent run) is not refused.
- Not `MPI_LOCALNRANKS` / `SLURM_TASKS_PER_NODE` and the like: those count one node's processes.
"""

from __future__ import annotations

from typing import Mapping

# Set by the process manager that started this process; the first one present is taken.
MPI_LAUNCHER_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
# Set by srun for every task of a job step (inside a step SLURM_NTASKS is the step's task count).
SLURM_STEP_SIZES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
SLURM_STEP_MARKERS = ("SLURM_STEP_ID", "SLURM_STEPID")


def _count(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def announced_size(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """(variable, count) of the launcher that started this process, or None when none announces one."""
    for name in MPI_LAUNCHER_SIZES:
        count = _count(environ, name)
        if count is not None:
            return name, count
    if any(marker in environ for marker in SLURM_STEP_MARKERS):
        for name in SLURM_STEP_SIZES:
            count = _count(environ, name)
            if count is not None:
                return name, count
    return None


def check_world_size(world_size: int, environ: Mapping[str, str]) -> str | None:
    """The refusal message when the launcher started a different number of processes than the MPI
    world holds (MPI not wired up between them), else None."""
    announced = announced_size(environ)
    if announced is None or announced[1] == world_size:
        return None
    name, count = announced
    ranks = f"{world_size} rank" + ("" if world_size == 1 else "s")
    what = (f"the launcher started {count} processes ({name}={count}) but this process's MPI world has "
            f"{ranks}")
    if world_size == 1:
        what += ": MPI is not wired up between them, so each would train alone as rank 0 of its own 1-rank world"
    if name.startswith("SLURM_"):
        return (f"{what}. Likely cause: srun's --mpi plugin does not match the MPI library mpi4py uses "
                f"(--mpi=none, or the cluster's MpiDefault, or --mpi=pmix with the PyPI mpich wheel, which "
                f"speaks PMI-1/PMI-2 only). Fix: srun --mpi=pmi2 for the mpich wheel (SRUN_MPI=pmi2 in "
                f"launch/), --mpi=pmix only for an mpi4py built against a PMIx-enabled site MPI, or start "
                f"the ranks with the venv's own mpiexec inside the allocation (LAUNCHER=mpiexec); "
                f"`srun --mpi=list` lists this cluster's plugins.")
    return (f"{what}. Likely cause: the launcher belongs to another MPI than the one mpi4py uses (e.g. "
            f"Open MPI's mpirun, or srun --mpi=pmi2 with an MPI built without PMI-2). Fix: start the ranks "
            f"with the mpiexec of mpi4py's own MPI (.venv/bin/mpiexec for the PyPI mpich wheel; "
            f"python -c 'from mpi4py import MPI; print(MPI.Get_library_version())' names it), or srun "
            f"with an --mpi plugin that MPI speaks (pmi2 for the mpich wheel).")
