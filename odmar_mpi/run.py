"""`python -m odmar_mpi.run`: train one agent per MPI rank (start under mpirun/mpiexec/srun)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import click
import numpy as np

from odmar_mpi.config import Config, ConfigError, load_config, to_toml, validate

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
# Written by rank 0 at the start: what a resume must match (the rank count) besides config.toml.
RUN_FILE = "run.json"
# Launchers' variables for this process's rank: usage errors are printed by rank 0 only, before MPI starts.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


class RunFolderError(RuntimeError):
    """The run folder cannot be used; the message says why and what to do."""


class StopSignals:
    """SIGTERM/SIGUSR1 before the node exists (start-up, imports, resume): remember them instead of dying.

    Slurm may send the time-limit signal early, while a loaded machine is still importing torch; the
    node then stops at its first agreed step."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, *_: object) -> None:
        self.received = True

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self)


STOP_SIGNALS = StopSignals()


def install_abort_hook() -> None:
    """An uncaught exception on one rank prints and aborts the job, so no rank waits forever."""
    from mpi4py import MPI

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        sys.stderr.flush()
        abort_after_output(MPI.COMM_WORLD)

    sys.excepthook = hook


def fail_everywhere(rank: int, err: Exception) -> None:
    """Every rank met the same error: rank 0 says it once, every rank exits 2."""
    if rank == 0:
        print(f"odmar_mpi.run: error: {err}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def abort_with_message(rank: int, err: Exception) -> None:
    from mpi4py import MPI

    print(f"odmar_mpi.run: rank {rank}: error: {err}", file=sys.stderr, flush=True)
    abort_after_output(MPI.COMM_WORLD)


ABORT_GRACE_S = 0.5
"""mpiexec drops output still on its way when a rank's Abort tears the job down: a message printed just before
was lost once in the test suite (empty stderr, exit 1), so output gets this long to reach mpiexec first."""


def abort_after_output(comm) -> None:
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


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
        problem = f" ({err.strerror})"
    failing = np.flatnonzero(flood.gather(1.0 if problem else 0.0)[:, 0] > 0).tolist()
    if failing:
        who = f"rank {failing[0]}" if len(failing) == 1 else f"ranks {', '.join(map(str, failing))}"
        # Only rank 0 prints: it names every failing rank, and its own reason when it is one of them.
        raise RunFolderError(f"{who} cannot write to run folder {run_dir}{problem}; pass a writable --out.")


def run_config(config_path: Path | None, overrides: tuple[str, ...], out: Path | None, resume: Path | None,
               ranks: int) -> Config:
    """The validated config of a new run, or of the run being resumed (which must have `ranks` ranks)."""
    if resume is None:
        cfg = load_config(config_path, overrides)
    else:
        if config_path is not None or out is not None:
            raise ConfigError("--resume takes its config and folder from the run; drop --config/--out (use --set to change a value).")
        if not (resume / "config.toml").is_file():
            raise ConfigError(f"--resume {resume}: no run there ({resume / 'config.toml'} is missing); give the folder of an earlier run.")
        made_with = json.loads((resume / RUN_FILE).read_text())["ranks"] if (resume / RUN_FILE).is_file() else ranks
        if made_with != ranks:
            raise ConfigError(f"--resume {resume}: the run was made with {made_with} ranks (one per agent) and this job "
                              f"has {ranks}; relaunch with {made_with} ranks, e.g. mpirun -n {made_with} python -m "
                              f"odmar_mpi.run --resume {resume}")
        cfg = load_config(resume / "config.toml", overrides)
    validate(cfg, ranks)
    return cfg


def require_devices(flood, cfg: Config) -> None:
    """With run.device = "cuda", every rank must see a GPU: refuse at once (on every rank) naming those that do not."""
    if cfg.run.device != "cuda":
        return
    import torch

    without = np.flatnonzero(flood.gather(0.0 if torch.cuda.is_available() else 1.0)[:, 0] > 0).tolist()
    if without:
        raise ConfigError(f"run.device = \"cuda\" but rank(s) {', '.join(map(str, without))} see no CUDA device; "
                          "run them on GPU nodes (e.g. sbatch launch/slurm_gpu.sbatch) or set run.device = \"auto\".")


def require_memory(flood, comm, cfg: Config) -> None:
    """Refuse, before anything is allocated, a config whose ranks would not fit in their node's memory.

    Each rank checks its own node (ranks sharing it, its available memory); the lowest failing rank
    says why, once, and every rank exits 2.
    """
    from mpi4py import MPI

    from odmar_mpi.memory import available_memory, check_fits, estimate_for_config

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    on_this_node = node.Get_size()
    node.Free()
    problem = check_fits(estimate_for_config(cfg, comm.Get_size()), on_this_node, available_memory())
    failing = np.flatnonzero(flood.gather(1.0 if problem else 0.0)[:, 0] > 0)
    if failing.size:
        if comm.Get_rank() == failing[0]:
            print(f"odmar_mpi.run: error: rank {failing[0]}'s node: {problem}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


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
    rank, ranks = comm.Get_rank(), comm.Get_size()
    from odmar_mpi.launch_check import check_world_size

    # A mis-wired launch starts N one-rank worlds (N singletons): each refuses, each says it once.
    refusal = check_world_size(ranks, os.environ)
    if refusal is not None:
        fail_everywhere(rank, RuntimeError(refusal))
    try:
        cfg = run_config(config_path, overrides, out, resume, ranks)
    except ConfigError as err:
        fail_everywhere(rank, err)

    from odmar_mpi.checkpoint import CheckpointError
    from odmar_mpi.comm.exchange import NeighbourTimeout
    from odmar_mpi.comm.flood import Flood
    from odmar_mpi.learners.base import NonFiniteError
    from odmar_mpi.node import Node

    graph = cfg.comm.graph(ranks, cfg.run.seed)
    flood = Flood(comm, graph, timeout_s=cfg.comm.timeout_s, name="run agreement")
    try:
        require_devices(flood, cfg)
        require_memory(flood, comm, cfg)
        run_dir = agree_run_folder(flood, out, resume)
        prepare_run_folder(flood, rank, run_dir)
    except (ConfigError, RunFolderError) as err:
        fail_everywhere(rank, err)

    node = Node(cfg, comm, graph, run_dir)
    try:
        if resume is not None:
            step = node.resume(flood)
            if rank == 0:
                print(f"resuming {run_dir} from step {step} with {comm.Get_size()} agents", flush=True)
        elif rank == 0:
            (run_dir / "config.toml").write_text(to_toml(cfg))
            (run_dir / RUN_FILE).write_text(json.dumps({"ranks": ranks}) + "\n")
            print(f"run folder {run_dir}: {comm.Get_size()} agents, algorithm {cfg.run.algorithm}, "
                  f"{cfg.total_steps} steps each on {node.device}", flush=True)
    except CheckpointError as err:
        fail_everywhere(rank, err)

    # From here the node's handler sets its flag; a signal that came while the ranks were starting is kept.
    node.stop_requested = STOP_SIGNALS.received
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, node.request_stop)
    try:
        completed = node.train()
    except (NonFiniteError, NeighbourTimeout, CheckpointError) as err:
        abort_with_message(rank, err)  # one rank's failure ends every rank, with its message first
    flood.barrier()  # every rank has written its records
    node.free()
    if rank != 0:
        return
    if not completed:
        print(f"stopped on request at step {node.step}; every rank checkpointed. "
              f"Continue with: python -m odmar_mpi.run --resume {run_dir}", flush=True)
        return
    (run_dir / COMPLETE_MARK).write_text(f"{node.step}\n")
    from odmar_mpi.report.summary import final_report

    final_report(run_dir)


def launcher_rank() -> int:
    """This process's rank as its launcher announced it (0 when none did): known before MPI starts."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def cli() -> None:
    """The entry point: a usage error (unknown option, missing value) is printed once per job, not per rank."""
    STOP_SIGNALS.install()
    try:
        code = main.main(standalone_mode=False)
    except click.ClickException as err:
        if launcher_rank() == 0:
            err.show()
        sys.exit(EXIT_USAGE)
    except click.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    cli()
