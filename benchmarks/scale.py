"""How neighbour gossip scales with the number of ranks: time per round, and rounds to 1e-10.

Run under MPI, one rank per agent:
    mpiexec -n R python benchmarks/scale.py [--inducing M | --dim D] [--repeats k] [--json]

For each topology (ring, torus, exponential; one that cannot take R ranks is skipped, with the
reason), with the given weights (Metropolis by default):

(a) time: milliseconds per gossip round (post receives, send to every neighbour, wait, mix in
    place) for one buffer of the packed GP statistics (M = 1000: 502,500 float64, 4.02 MB),
    median over repeats of the slowest rank, against `MPI.Allreduce` of the same buffer timed in
    the same run: the centralised reference.
(b) rounds: how many rounds plain, Chebyshev and finite-time consensus need until every rank is
    within 1e-10 relative error (|x_i - mean|_2 / |mean|_2, max over ranks) of the exact average,
    which MPI.Allreduce computes once beforehand. Measured on a small buffer (--rounds-dim, 64
    float64): the rounds do not depend on the buffer's length. Beside it the prediction from
    W's spectrum (`predicted_rounds`, a bound relative to the initial disagreement). Plain runs
    in chunks until it reaches the tolerance or --cap rounds ("> cap" if not reached); Chebyshev
    cannot be restarted mid-way, so it runs one call of min(cap, 2 x predicted + 10) rounds.
    "time to 1e-10" = measured rounds x ms per round, in units of one Allreduce.

Each rank records its own error after every round without communicating; one reduction per call
takes the maximum over ranks, so the measurement adds no message per round.

This script does not import torch (odmar_mpi.bench.consensus does, via model.statistics, for
its buffer size): at 64 ranks torch's ~150 MB per process would take 10 GB of a 24 GB machine
and a minute of start-up on 2 cores. It therefore carries its own small timing helper.
"""

from __future__ import annotations

import json
import os

import click
import numpy as np
from mpi4py import MPI

from odmar_mpi.bench.consensus import slowest_median_ms  # that module imports no torch
from odmar_mpi.comm.consensus import Consensus
from odmar_mpi.comm.topology import TOPOLOGIES, Graph, TopologyError, build_graph
from odmar_mpi.comm.weights import ALGORITHMS, WEIGHT_SCHEMES, mixing_matrix, predicted_rounds, second_largest_modulus

TOL = 1e-10  # the round counts in docs/architecture.md are quoted for this relative error
DEFAULT_TOPOLOGIES = ("ring", "torus", "exponential")
CHUNK = 250  # plain consensus: rounds per call between checks of the tolerance


def packed_statistics_size(num_inducing: int, out_dim: int = 2) -> int:
    """Length of the packed GP statistics, M (M + 1) / 2 + M d (as odmar_mpi.model.statistics.packed_size)."""
    return num_inducing * (num_inducing + 1) // 2 + num_inducing * out_dim


def random_buffer(comm: MPI.Comm, size: int, seed: int) -> np.ndarray:
    """A rank's own uniform [0, 1) float64 buffer, different on every rank."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(comm.Get_rank(),))).random(size)


def time_gossip(comm: MPI.Comm, graph: Graph, W: np.ndarray, size: int, rounds: int, repeats: int,
                timeout_s: float, seed: int) -> dict:
    """ms per plain gossip round of a `size`-float64 buffer, and MPI.Allreduce of the same buffer."""
    x = random_buffer(comm, size, seed)
    consensus = Consensus(comm, graph, W, "plain", rounds=rounds, timeout_s=timeout_s, size=size)
    consensus.average(x)  # warm-up: first-touch of the buffers, MPI connection set-up
    call_ms = slowest_median_ms(comm, lambda: consensus.average(x), repeats)
    consensus.free()
    total = np.empty(size)
    comm.Allreduce(x, total, op=MPI.SUM)
    allreduce_ms = slowest_median_ms(comm, lambda: comm.Allreduce(x, total, op=MPI.SUM), repeats)
    return {"ms_per_round": call_ms / rounds, "allreduce_ms": allreduce_ms,
            "round_over_allreduce": call_ms / rounds / allreduce_ms}


def rounds_to_tolerance(comm: MPI.Comm, graph: Graph, W: np.ndarray, algorithm: str, dim: int, cap: int,
                        timeout_s: float, seed: int) -> dict:
    """Rounds until the max over ranks of |x_i - mean|_2 / |mean|_2 is <= TOL (None if not within `limit`)."""
    x = random_buffer(comm, dim, seed)
    mean = np.empty(dim)
    comm.Allreduce(x, mean, op=MPI.SUM)
    mean /= comm.Get_size()
    mean_norm = float(np.linalg.norm(mean))
    predicted = predicted_rounds(W, algorithm, TOL)
    if algorithm == "plain":
        limit, per_call = cap, min(CHUNK, cap)
    elif algorithm == "chebyshev":
        limit = per_call = min(cap, 2 * predicted + 10)
    else:
        limit = per_call = predicted  # finite-time: exactly its K rounds
    consensus = Consensus(comm, graph, W, algorithm, rounds=per_call, timeout_s=timeout_s, size=dim)
    errors: list[float] = []  # entry k: the largest error over ranks after k rounds
    done, reached = 0, None
    while done < limit and reached is None:
        local: list[float] = []

        def record(_: int, estimate: np.ndarray) -> None:
            local.append(float(np.linalg.norm(estimate - mean)) / mean_norm)

        result = consensus.average(x, on_round=record)
        if errors:
            local = local[1:]  # a chunk's round 0 is the previous chunk's last round
        worst = np.empty(len(local))
        comm.Allreduce(np.array(local), worst, op=MPI.MAX)
        below = np.flatnonzero(worst <= TOL)
        if below.size:
            reached = len(errors) + int(below[0])
        errors += worst.tolist()
        done += result.rounds
        x = result.value
    consensus.free()
    return {"algorithm": algorithm, "rounds": reached, "limit": done, "predicted": predicted,
            "final_error": errors[-1]}


def run(comm: MPI.Comm, topologies: tuple[str, ...], weights: str, size: int, dim: int, timed_rounds: int,
        repeats: int, cap: int, timeout_s: float, seed: int) -> dict:
    """All measurements for this job's rank count. Collective."""
    ranks = comm.Get_size()
    rows, skipped = [], []
    for name in topologies:
        try:
            graph = build_graph(name, ranks, seed=seed)
        except TopologyError as err:
            skipped.append({"topology": name, "reason": str(err)})
            continue
        W = mixing_matrix(graph, weights)
        row = {"topology": name, "max_degree": max(graph.degree(i) for i in range(ranks)),
               "diameter": graph.diameter(), "slem": second_largest_modulus(W)}
        row.update(time_gossip(comm, graph, W, size, timed_rounds, repeats, timeout_s, seed))
        row["consensus"] = [rounds_to_tolerance(comm, graph, W, algorithm, dim, cap, timeout_s, seed)
                            for algorithm in ALGORITHMS]
        rows.append(row)
    return {"ranks": ranks, "cores": len(os.sched_getaffinity(0)), "weights": weights, "buffer_float64": size,
            "buffer_mb": size * 8 / 1e6, "rounds_dim": dim, "tol": TOL, "cap": cap, "repeats": repeats,
            "timed_rounds": timed_rounds, "topologies": rows, "skipped": skipped}


def table(result: dict) -> str:
    """The result of `run` as the table rank 0 prints."""
    ranks, cores = result["ranks"], result["cores"]
    load = f"oversubscribed {ranks / cores:.0f}x" if ranks > cores else "one core each"
    lines = [
        f"scale: {ranks} ranks on {cores} cores ({load}), {result['weights']} weights; "
        f"time per round on {result['buffer_float64']} float64 ({result['buffer_mb']:.2f} MB), "
        f"median of {result['repeats']} calls of {result['timed_rounds']} rounds; "
        f"rounds to {result['tol']:g} on {result['rounds_dim']} float64 (plain cap {result['cap']})",
        f"{'topology':<12}{'deg':>4}{'diam':>5}{'slem':>9}{'ms/round':>10}{'allreduce':>11}{'ratio':>7}"
        + "".join(f"{a + ' meas/pred':>24}" for a in ALGORITHMS),
    ]
    for row in result["topologies"]:
        cells = []
        for c in row["consensus"]:
            measured = f"> {c['limit']}" if c["rounds"] is None else str(c["rounds"])
            cost = "" if c["rounds"] is None else f" ({c['rounds'] * row['round_over_allreduce']:.3g}x)"
            cells.append(f"{measured + '/' + str(c['predicted']) + cost:>24}")
        lines.append(f"{row['topology']:<12}{row['max_degree']:>4}{row['diameter']:>5}{row['slem']:>9.5f}"
                     f"{row['ms_per_round']:>10.3f}{row['allreduce_ms']:>11.3f}{row['round_over_allreduce']:>7.2f}"
                     + "".join(cells))
    lines.append("ms/round and allreduce in ms; ratio = round / allreduce; (Nx) = time to 1e-10 in Allreduces")
    lines += [f"skipped {s['topology']}: {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--inducing", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Time buffers of the packed GP statistics for M inducing points, 2 outputs: M(M+1)/2 + 2M float64.")
@click.option("--dim", type=click.IntRange(min=1),
              help="Time buffers of this many float64 instead (overrides --inducing).")
@click.option("--rounds-dim", type=click.IntRange(min=1), default=64, show_default=True,
              help="Buffer length for the rounds-to-tolerance part.")
@click.option("--topologies", default=",".join(DEFAULT_TOPOLOGIES), show_default=True,
              help=f"Comma-separated, from: {', '.join(TOPOLOGIES)}.")
@click.option("--weights", type=click.Choice(WEIGHT_SCHEMES), default="metropolis", show_default=True)
@click.option("--timed-rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Plain rounds per timed call.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed calls; the median is reported.")
@click.option("--cap", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Most rounds for plain (and Chebyshev) consensus in the rounds part.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Neighbour deadline per round (oversubscribed runs are slow).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Also print the results as one JSON object.")
def main(inducing: int, dim: int | None, rounds_dim: int, topologies: str, weights: str, timed_rounds: int,
         repeats: int, cap: int, timeout_s: float, seed: int, as_json: bool) -> None:
    """Gossip time per round against MPI.Allreduce, and rounds to 1e-10 per algorithm, for this rank count."""
    names = tuple(name.strip() for name in topologies.split(",") if name.strip())
    unknown = [name for name in names if name not in TOPOLOGIES]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not a topology; choose from {', '.join(TOPOLOGIES)}.",
                                 param_hint="--topologies")
    size = dim if dim is not None else packed_statistics_size(inducing)
    comm = MPI.COMM_WORLD
    result = run(comm, names, weights, size, rounds_dim, timed_rounds, repeats, cap, timeout_s, seed)
    if comm.Get_rank() == 0:
        print(table(result), flush=True)
        if as_json:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
