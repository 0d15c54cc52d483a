"""`mpiexec -n R python -m odmar_mpi.bench consensus ...`: neighbour-only consensus against MPI.Allreduce.

Every rank draws a random float64 buffer (--dim D, or --inducing M: the packed GP statistics'
M (M + 1) / 2 + 2 M entries). One consensus call records, after each round k, the largest relative
error over ranks |x_i - mean|_2 / |mean|_2 against the exact mean from MPI.Allreduce; further calls
are timed, as is a plain MPI.Allreduce of the same buffer in the same run. Rank 0 prints the result.
ms_per_round is the median call time of the slowest rank divided by the rounds (so it includes
copying the buffer in and out once per call).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import click
import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.consensus import Consensus
from odmar_mpi.comm.topology import TOPOLOGIES, build_graph
from odmar_mpi.comm.weights import ALGORITHMS, WEIGHT_SCHEMES, mixing_matrix, predicted_rounds, second_largest_modulus

FIGURE_TOL = 1e-10  # the error the round counts of docs/architecture.md are quoted for
DEFAULT_TOL = 1e-12  # plain/chebyshev default: enough rounds to show the curve pass FIGURE_TOL


def slowest_median_ms(comm: MPI.Comm, action: Callable[[], object], repeats: int) -> float:
    """Median over repeats of the slowest rank's wall time for `action()` (collective), in ms."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        action()
        times.append(comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
    return 1e3 * float(np.median(times))


def run(comm: MPI.Comm, topology: str, weights: str, algorithm: str, size: int, rounds: int | None,
        repeats: int, seed: int, timeout_s: float, edges_file: str | None = None) -> dict:
    """The benchmark's result on every rank (collective)."""
    ranks, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph(topology, ranks, seed=seed, edges_file=edges_file)
    W = mixing_matrix(graph, weights)
    if rounds is None and algorithm != "finite-time":
        rounds = predicted_rounds(W, algorithm, DEFAULT_TOL)
    consensus = Consensus(comm, graph, W, algorithm, rounds=rounds, timeout_s=timeout_s, size=size)
    x = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rank,))).random(size)
    mean = np.empty(size)
    comm.Allreduce(x, mean, op=MPI.SUM)
    mean /= ranks
    mean_norm = float(np.linalg.norm(mean))

    errors: list[float] = []

    def record(_: int, estimate: np.ndarray) -> None:
        errors.append(comm.allreduce(float(np.linalg.norm(estimate - mean)) / mean_norm, op=MPI.MAX))

    done = consensus.average(x, on_round=record).rounds
    consensus_ms = slowest_median_ms(comm, lambda: consensus.average(x), repeats)
    total = np.empty(size)
    allreduce_ms = slowest_median_ms(comm, lambda: comm.Allreduce(x, total, op=MPI.SUM), repeats)
    consensus.free()
    ms_per_round = consensus_ms / done if done else 0.0
    reached = next((k for k, e in enumerate(errors) if e <= FIGURE_TOL), None)
    return {
        "algorithm": algorithm, "topology": topology, "weights": weights, "ranks": ranks, "dim": size,
        "rounds": done, "rel_error_per_round": errors,
        "rounds_to_1e-10": reached,
        "predicted_rounds_to_1e-10": predicted_rounds(W, algorithm, FIGURE_TOL),
        "second_largest_modulus": second_largest_modulus(W),
        "bytes_per_neighbour_per_round": size * np.dtype(np.float64).itemsize,
        "ms_per_round": ms_per_round, "consensus_ms": consensus_ms, "allreduce_ms": allreduce_ms,
        "ms_per_round_over_allreduce": ms_per_round / allreduce_ms,
    }


def table(result: dict) -> str:
    head = (f"consensus: {result['algorithm']} on a {result['ranks']}-rank {result['topology']} "
            f"({result['weights']} weights, slem {result['second_largest_modulus']:.4f}), "
            f"{result['dim']} float64 = {result['bytes_per_neighbour_per_round'] / 1e6:.2f} MB per neighbour per round")
    errors = result["rel_error_per_round"]
    shown = sorted({0, 1, 2, len(errors) - 1, *(k for k in (result["rounds_to_1e-10"],) if k is not None)})
    lines = [head, "  round  max relative error over ranks"]
    lines += [f"  {k:5d}  {errors[k]:.2e}" for k in shown if k < len(errors)]
    lines += [
        f"  rounds to 1e-10: {result['rounds_to_1e-10']} measured, {result['predicted_rounds_to_1e-10']} predicted",
        f"  time: {result['ms_per_round']:.3f} ms per round ({result['consensus_ms']:.3f} ms per call of "
        f"{result['rounds']} rounds); MPI.Allreduce of the same buffer {result['allreduce_ms']:.3f} ms; "
        f"round / allreduce = {result['ms_per_round_over_allreduce']:.2f}",
    ]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="ring", show_default=True)
@click.option("--weights", type=click.Choice(WEIGHT_SCHEMES), default="metropolis", show_default=True)
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="finite-time", show_default=True)
@click.option("--dim", type=click.IntRange(min=1), help="Average random buffers of this many float64.")
@click.option("--inducing", type=click.IntRange(min=1),
              help="Size buffers like the packed GP statistics for M inducing points, 2 outputs: M(M+1)/2 + 2M.")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Rounds for plain/chebyshev [default: predicted for 1e-12]; finite-time always runs its K.")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="Timed calls; the median is reported.")
@click.option("--edges-file", type=click.Path(dir_okay=False), help='For --topology edges: one "i j" edge per line.')
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Data and random graphs.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def cli(topology: str, weights: str, algorithm: str, dim: int | None, inducing: int | None, rounds: int | None,
        repeats: int, edges_file: str | None, seed: int, timeout_s: float, as_json: bool) -> None:
    """Neighbour-only consensus: error per round, bytes and time per round, against MPI.Allreduce. Run under mpiexec."""
    if (dim is None) == (inducing is None):
        raise click.UsageError("give exactly one of --dim D or --inducing M.")
    if dim is None:
        from odmar_mpi.model.statistics import packed_size  # here, so the rest of this module never imports torch

        size = packed_size(inducing, 2)
    else:
        size = dim
    comm = MPI.COMM_WORLD
    result = run(comm, topology, weights, algorithm, size, rounds, repeats, seed, timeout_s, edges_file)
    if comm.Get_rank() == 0:
        print(json.dumps(result) if as_json else table(result), flush=True)


def main(argv: list[str]) -> None:
    cli.main(args=argv, prog_name="python -m odmar_mpi.bench consensus")
