"""`mpiexec -n N python -m odmar_mpi.bench learner --config CONFIG [--set ...] [--json]`: where a run's time goes.

Plays a short real run of any algorithm (the config's warm-up and training steps; shorten them with
--set) through the real `Node` into a temporary folder, then prints the environment steps per second per
agent (steps over the slowest rank's wall time of the loop) and the seconds per part, the mean over ranks
of the node's phase clock (the phases partition the loop's time; odmar_mpi.telemetry.PHASES), plus the
seconds spent waiting for neighbours (inside the communication parts).

For MAMBA it also gives the matmul floor of its two training rounds, measured in the same run: the
FLOPs of one world-model update and of one imagination + PPO round (torch's FlopCounterMode, counted on
one extra round of each after the loop), and this machine's matmul rate for the PPO minibatch's shape
timed on every rank at once (so the ranks share the cores as they did in the loop); floor = FLOPs / rate,
and measured seconds per round over the floor.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from mpi4py import MPI
from torch.utils.flop_counter import FlopCounterMode

from odmar_mpi.config import ConfigError, load_config, validate
from odmar_mpi.node import Node
from odmar_mpi.run import install_abort_hook

PARTS = {  # what the table calls each group of phases
    "acting": ("act",), "messages": ("messages",), "action flood": ("action_flood",), "env": ("env",),
    "step gossip": ("step_gossip",), "observe": ("observe",), "world-model update": ("model",),
    "consensus": ("consensus",), "imagination": ("imagination",), "policy updates (SAC, PPO)": ("updates",),
    "weight averaging": ("averaging",), "evaluation": ("eval",), "checkpoint": ("checkpoint",),
}
MATMUL_SECONDS = 1.0  # how long every rank times the matmul


def matmul_rate(rows: int, inner: int, cols: int, device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of (rows, inner) @ (inner, cols) in `dtype` on `device`, timed for about MATMUL_SECONDS."""
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, cols, device=device, dtype=dtype)
    a @ b  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < MATMUL_SECONDS:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2.0 * rows * inner * cols * count / (time.perf_counter() - start)


def counted_flops(action: Any) -> float:
    """FLOPs of the matrix products `action()` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        action()
    return float(counter.get_total_flops())


def mamba_floor(node: Node, comm: MPI.Comm) -> dict[str, Any]:
    """Per training round of MAMBA (a world-model update; an imagination + PPO round): measured seconds, counted
    GFLOP, the matmul rate every rank gets at once, the floor and the ratio. Collective (the rate is timed on
    every rank together)."""
    learner, clock, cfg = node.learner, node.telemetry.clock.seconds, node.cfg
    phases = len(node.telemetry.records.rows["mamba"])
    rounds = {"world_model": phases * cfg.mamba.model_updates, "imagination_ppo": phases * cfg.mamba.policy_updates}
    seconds = {"world_model": clock["model"], "imagination_ppo": clock["imagination"] + clock["updates"]}
    flops = {"world_model": counted_flops(lambda: learner.train_model(node.step)),
             "imagination_ppo": counted_flops(lambda: learner.train_policy(node.step))}
    comm.Barrier()
    # in the arithmetic the run's products use (run.precision names a torch dtype)
    rate = matmul_rate(cfg.ppo.minibatch_size, cfg.world_model.features, cfg.ppo.critic_hidden, node.device,
                       getattr(torch, cfg.run.precision))
    result = {}
    for part in rounds:
        if not rounds[part]:
            continue
        per_round = seconds[part] / rounds[part]
        floor = flops[part] / rate
        result[part] = {"rounds": rounds[part], "seconds_per_round": per_round, "gflop_per_round": flops[part] / 1e9,
                        "floor_s_per_round": floor, "over_floor": per_round / floor}
    result["matmul_gflop_per_s"] = rate / 1e9
    result["matmul_shape"] = [cfg.ppo.minibatch_size, cfg.world_model.features, cfg.ppo.critic_hidden]
    result["matmul_dtype"] = cfg.run.precision
    return result


def run(comm: MPI.Comm, config: Path | None, overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """Play the run, measure it; the result on rank 0 (None elsewhere). Collective."""
    rank, ranks = comm.Get_rank(), comm.Get_size()
    cfg = load_config(config, overrides)
    validate(cfg, ranks)
    folder = Path(comm.bcast(tempfile.mkdtemp(prefix="odmar-bench-") if rank == 0 else None))
    node = Node(cfg, comm, cfg.comm.graph(ranks, cfg.run.seed), folder)
    comm.Barrier()
    start = time.perf_counter()
    node.train()
    wall = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    seconds = dict(node.telemetry.clock.seconds)
    waited = node.waited_s()
    floor = [mamba_floor(node, comm)] if cfg.run.algorithm == "mamba" else []
    everyone = comm.gather((seconds, waited, floor), root=0)
    node.free()
    if rank != 0:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    mean = {name: float(np.mean([sum(s[p] for p in phases) for s, _, _ in everyone]))
            for name, phases in PARTS.items()}
    result: dict[str, Any] = {
        "algorithm": cfg.run.algorithm, "world": cfg.env.world, "ranks": ranks, "device": str(node.device),
        "steps_per_agent": cfg.total_steps, "wall_s": wall, "steps_per_second_per_agent": cfg.total_steps / wall,
        "seconds": mean, "waiting_s": float(np.mean([w for _, w, _ in everyone])),
    }
    if floor:  # rank 0's rounds; the others' differ only by which rank waited
        result["floor"] = floor[0]
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['algorithm']} on {result['world']}, {result['ranks']} ranks on {result['device']}, "
             f"{result['steps_per_agent']} steps per agent: {result['steps_per_second_per_agent']:.2f} steps/s per "
             f"agent ({result['wall_s']:.1f} s)",
             "seconds per part (mean over ranks):"]
    lines += [f"  {name:<28} {seconds:9.2f}" for name, seconds in result["seconds"].items() if seconds > 0]
    lines.append(f"  {'waiting for neighbours':<28} {result['waiting_s']:9.2f}  (inside the communication parts)")
    for part, figures in result.get("floor", {}).items():
        if isinstance(figures, dict):
            lines.append(f"{part.replace('_', ' ')}: {figures['rounds']} rounds, {figures['seconds_per_round']:.3f} s "
                         f"each, {figures['gflop_per_round']:.1f} GFLOP; matmul floor {figures['floor_s_per_round']:.3f} "
                         f"s at {result['floor']['matmul_gflop_per_s']:.1f} GFLOP/s per rank "
                         f"({result['floor']['matmul_dtype']}): "
                         f"{figures['over_floor']:.2f}x the floor")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config (default: the built-in one).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a value; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def cli(config_path: Path | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Steps per second per agent and seconds per part of a short real run. Run under mpiexec."""
    install_abort_hook()  # an error on one rank ends the job, as in a run
    comm = MPI.COMM_WORLD
    try:
        result = run(comm, config_path, overrides)
    except ConfigError as err:
        if comm.Get_rank() == 0:
            click.echo(f"odmar_mpi.bench learner: error: {err}", err=True)
        raise SystemExit(2) from None
    if result is not None:
        click.echo(json.dumps(result) if as_json else table(result))


def main(argv: list[str]) -> None:
    cli.main(args=argv, prog_name="python -m odmar_mpi.bench learner")
