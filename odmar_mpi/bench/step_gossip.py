"""`mpiexec -n R python -m odmar_mpi.bench step-gossip ...`: the per-step gossip against a flood every step.

Every step each rank contributes a few float64 (its reward and a stop flag). The pipelined
`StepGossip` sends one message per neighbour per step; the reference, measured in the same run, is
the scheme it replaced: a `Flood` of the same values every step (D rounds per step, D = diameter).
Both are checked to give every rank the same exact table. Rank 0 prints rounds and seconds per
step for each, and their ratio.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.flood import Flood
from odmar_mpi.comm.step_gossip import StepGossip
from odmar_mpi.comm.topology import TOPOLOGIES, build_graph

WIDTH = 2  # reward and stop flag, as the node sends


def timed_steps(comm: MPI.Comm, steps: int, push) -> tuple[float, list]:
    """Seconds per step of the slowest rank over `steps` calls of push(values), and what they returned."""
    rank, out = comm.Get_rank(), []
    comm.Barrier()
    start = time.perf_counter()
    for t in range(steps):
        table = push(np.array([rank + t / 8, 0.0]))
        out.append(None if table is None else table.copy())
    elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    return elapsed / steps, out


def run(comm: MPI.Comm, topology: str, steps: int, seed: int, timeout_s: float) -> dict:
    """The benchmark's result on every rank (collective)."""
    ranks = comm.Get_size()
    graph = build_graph(topology, ranks, seed=seed)
    pipelined = StepGossip(comm, graph, width=WIDTH, timeout_s=timeout_s)
    counted = []
    exchange = pipelined.exchange.exchange if pipelined.exchange is not None else None
    if exchange is not None:
        def counting(send, *, call, round):
            counted.append(round)
            return exchange(send, call=call, round=round)
        pipelined.exchange.exchange = counting
    pipelined_s, tables = timed_steps(comm, steps, pipelined.push)
    flood = Flood(comm, graph, width=WIDTH, timeout_s=timeout_s, name="flood per step")
    flood_s, flooded = timed_steps(comm, steps, flood.gather)
    delay = pipelined.delay
    exact = all(np.array_equal(tables[t + delay], flooded[t]) for t in range(steps - delay))
    identical = comm.allreduce(int(exact), op=MPI.MIN) == 1
    result = {
        "topology": topology, "ranks": ranks, "diameter": graph.diameter(), "steps": steps,
        "rounds_per_step": len(counted) / steps, "seconds_per_step": pipelined_s,
        "delay_steps": delay, "bytes_per_neighbour_per_step": pipelined.message_bytes,
        "flood_rounds_per_step": graph.diameter(), "flood_seconds_per_step": flood_s,
        "flood_over_pipelined": flood_s / pipelined_s if pipelined_s > 0 else None,
        "exact_and_identical": identical,
    }
    pipelined.free()
    flood.free()
    return result


def table(result: dict) -> str:
    return "\n".join([
        f"step gossip on a {result['ranks']}-rank {result['topology']} (diameter {result['diameter']}), "
        f"{result['steps']} steps:",
        f"  pipelined: {result['rounds_per_step']:.2f} rounds per step, {1e6 * result['seconds_per_step']:.1f} us "
        f"per step, {result['bytes_per_neighbour_per_step']} B per neighbour per step, complete "
        f"{result['delay_steps']} steps later",
        f"  flood every step (reference): {result['flood_rounds_per_step']} rounds per step, "
        f"{1e6 * result['flood_seconds_per_step']:.1f} us per step",
        f"  flood / pipelined time: {result['flood_over_pipelined']:.2f}; same exact tables on every rank: "
        f"{result['exact_and_identical']}",
    ])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="ring", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random graphs.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def cli(topology: str, steps: int, seed: int, timeout_s: float, as_json: bool) -> None:
    """Per-step gossip: rounds and seconds per step, pipelined vs a flood every step. Run under mpiexec."""
    comm = MPI.COMM_WORLD
    result = run(comm, topology, steps, seed, timeout_s)
    if comm.Get_rank() == 0:
        print(json.dumps(result) if as_json else table(result), flush=True)


def main(argv: list[str]) -> None:
    cli.main(args=argv, prog_name="python -m odmar_mpi.bench step-gossip")
