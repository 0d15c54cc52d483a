"""`python -m odmar_mpi.run`: train one agent per MPI rank (start under mpirun/mpiexec/srun)."""

from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path

import click

from odmar_mpi.config import ConfigError, load_config, to_toml, validate

EPILOG = """\b
Examples:
  mpirun -n 8 python -m odmar_mpi.run
  mpiexec -n 4 python -m odmar_mpi.run --config configs/quick.toml
  mpirun -n 5 python -m odmar_mpi.run --config configs/odmar_beta0.01.toml --set run.seed=1
  mpirun -n 5 python -m odmar_mpi.run --resume runs/20261124-101500
"""

# Errors every rank meets identically (config, run folder, resume agreement): exit 2 everywhere.
# Errors one rank meets alone (NaN, a silent neighbour): that rank aborts the whole job.
EXIT_USAGE = 2
# Written by rank 0 when the run has done all its steps (job scripts requeue until it exists).
COMPLETE_MARK = "COMPLETE"


class RunFolderError(RuntimeError):
    """The run folder cannot be used; the message says why and what to do."""


def install_abort_hook() -> None:
    """An uncaught exception on one rank prints and aborts the job, so no rank waits forever."""
    from mpi4py import MPI

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook


def fail_everywhere(rank: int, err: Exception) -> None:
    """Every rank met the same error: rank 0 says it once, every rank exits 2."""
    if rank == 0:
        print(f"odmar_mpi.run: error: {err}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def abort_with_message(rank: int, err: Exception) -> None:
    from mpi4py import MPI

    print(f"odmar_mpi.run: rank {rank}: error: {err}", file=sys.stderr, flush=True)
    MPI.COMM_WORLD.Abort(1)


def agree_run_folder(flood, out: Path | None, resume: Path | None) -> Path:
    """The run folder every rank uses; a default name comes from the latest start time over all ranks."""
    if resume is not None:
        return resume
    if out is not None:
        run_dir = out
    else:
        started = flood.maximum(float(int(time.time())))
        run_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    taken = (run_dir / "checkpoints").exists() or (run_dir / "records").exists()
    # The gossip completes only after every rank has looked, so nobody sees a folder another rank just made.
    if flood.maximum(1.0 if taken else 0.0) > 0:
        raise RunFolderError(
            f"run folder {run_dir} already holds a run; continue it with --resume {run_dir}, or pass another --out."
        )
    return run_dir


def prepare_run_folder(flood, rank: int, run_dir: Path) -> None:
    """Create the folders and prove they are writable on every rank before any training."""
    problem = ""
    try:
        for sub in ("records", "checkpoints"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        probe = run_dir / "checkpoints" / f".probe{rank}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        problem = f"rank {rank}: cannot write to run folder {run_dir} ({err.strerror}); pass a writable --out."
    if problem:
        print(f"odmar_mpi.run: error: {problem}", file=sys.stderr, flush=True)
    if flood.minimum(0.0 if problem else 1.0) < 1.0:
        raise RunFolderError(problem or f"another rank cannot write to run folder {run_dir} (see its message).")


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (see configs/). Default: the built-in default, the original's setting "
                   "(ODMAR, beta 0.01, action penalty, ring, 100 plain consensus rounds).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value, e.g. --set model.beta=0 --set comm.algorithm=finite-time. Repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for records, checkpoints and the plot. Default: runs/<timestamp>.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder from the newest step every rank has checkpointed.")
def main(config_path: Path | None, overrides: tuple[str, ...], out: Path | None, resume: Path | None) -> None:
    """Train one ODMAR (or SAC) agent per MPI rank; ranks share their world model only by neighbour gossip.

    The number of agents is the number of ranks. Rank 0 prints progress and, at the end,
    a summary of the team's evaluation returns and a learning-curve plot in the run folder.
    """
    from mpi4py import MPI

    install_abort_hook()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    import os

    from odmar_mpi.launch_check import check_world_size

    # A mis-wired launch starts N one-rank worlds (N singletons): each refuses, each says it once.
    refusal = check_world_size(comm.Get_size(), os.environ)
    if refusal is not None:
        fail_everywhere(rank, RuntimeError(refusal))
    try:
        if resume is not None:
            if config_path is not None or out is not None:
                raise ConfigError("--resume takes its config and folder from the run; drop --config/--out (use --set to change a value).")
            if not (resume / "config.toml").is_file():
                raise ConfigError(f"--resume {resume}: no run there ({resume / 'config.toml'} is missing); give the folder of an earlier run.")
            cfg = load_config(resume / "config.toml", overrides)
        else:
            cfg = load_config(config_path, overrides)
        validate(cfg, comm.Get_size())
    except ConfigError as err:
        fail_everywhere(rank, err)

    from odmar_mpi.checkpoint import CheckpointError
    from odmar_mpi.comm.exchange import NeighbourTimeout
    from odmar_mpi.comm.flood import Flood
    from odmar_mpi.learners.sac import NonFiniteError
    from odmar_mpi.node import Node

    graph = cfg.comm.graph(comm.Get_size(), cfg.run.seed)
    flood = Flood(comm, graph, timeout_s=cfg.comm.timeout_s, name="run agreement")
    try:
        run_dir = agree_run_folder(flood, out, resume)
        prepare_run_folder(flood, rank, run_dir)
    except RunFolderError as err:
        fail_everywhere(rank, err)

    node = Node(cfg, comm, graph, run_dir)
    try:
        if resume is not None:
            step = node.resume(flood)
            if rank == 0:
                print(f"resuming {run_dir} from step {step} with {comm.Get_size()} agents", flush=True)
        elif rank == 0:
            (run_dir / "config.toml").write_text(to_toml(cfg))
            print(f"run folder {run_dir}: {comm.Get_size()} agents, algorithm {cfg.run.algorithm}, "
                  f"{cfg.total_steps} steps each on {node.device}", flush=True)
    except CheckpointError as err:
        fail_everywhere(rank, err)

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, node.request_stop)
    try:
        completed = node.train()
    except (NonFiniteError, NeighbourTimeout, CheckpointError) as err:
        abort_with_message(rank, err)  # one rank's failure ends every rank, with its message first
    flood.barrier()  # every rank has written its records
    if rank != 0:
        return
    if not completed:
        print(f"stopped on request at step {node.step}; every rank checkpointed. "
              f"Continue with: python -m odmar_mpi.run --resume {run_dir}", flush=True)
        return
    (run_dir / COMPLETE_MARK).write_text(f"{node.step}\n")
    from odmar_mpi.report import final_report

    final_report(run_dir)


if __name__ == "__main__":
    main()
