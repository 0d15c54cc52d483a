"""Neighbour exchange and consensus over real MPI ranks (pytest-mpi; CI runs 2 and 4 ranks).

Every rank draws all ranks' vectors from one seed, so each knows the exact average without a message
and checks its own result against it. Collectives come before assertions, so a failure on one rank
cannot leave the others waiting. Tests marked mpi run under
`mpiexec -n K python -m pytest --with-mpi --only-mpi`; the unmarked ones send no message and run serially.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from mpi4py import MPI

from odmar_mpi.comm.consensus import ALGORITHMS, Consensus
from odmar_mpi.comm.exchange import NeighbourExchange, NeighbourTimeout
from odmar_mpi.comm.flood import Flood
from odmar_mpi.comm.topology import Graph, TopologyError, build_graph
from odmar_mpi.comm.weights import WeightsError, finite_time_schedule, mixing_matrix, predicted_rounds

DIM = 64
TIMEOUT_S = 20.0  # generous for 4 ranks on 2 oversubscribed cores; only the deadline tests wait for it
SHORT_TIMEOUT_S = 0.5  # deadline tests: long enough for a healthy round on a loaded machine, short for CI


def all_vectors(n: int, seed: int) -> np.ndarray:
    """(n, DIM) vectors, row r = rank r's input; the same on every rank."""
    return np.random.default_rng(seed).random((n, DIM))


def max_relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(value - reference).max() / np.abs(reference).max())


class NoMessageComm:
    """Stands in for a communicator of `size` ranks; any attempt to communicate fails the test."""

    def __init__(self, size: int, rank: int = 0) -> None:
        self.size, self.rank = size, rank

    def Get_size(self) -> int:
        return self.size

    def Get_rank(self) -> int:
        return self.rank

    def __getattr__(self, name: str):
        raise AssertionError(f"comm.{name} was called before the bad graph or weights were refused")


# ---------------------------------------------------------------------------- refusals (no MPI messages)


def test_wrong_rank_count_is_refused_before_any_message():
    graph = build_graph("ring", 3)
    with pytest.raises(TopologyError, match="the graph has 3 ranks but the job runs 4"):
        Consensus(NoMessageComm(4), graph, mixing_matrix(graph))


def test_disconnected_graph_and_foreign_weights_are_refused_before_any_message():
    two_pairs = Graph(4, ((1,), (0,), (3,), (2,)))
    with pytest.raises(TopologyError, match="ranks 2, 3 cannot be reached from rank 0"):
        Consensus(NoMessageComm(4), two_pairs, np.full((4, 4), 0.25))
    with pytest.raises(WeightsError, match="ranks 0 and 2 are not neighbours"):
        Consensus(NoMessageComm(4), build_graph("ring", 4), mixing_matrix(build_graph("complete", 4)))
    with pytest.raises(ValueError, match='"plain" needs comm.rounds >= 1 or comm.tol > 0'):
        Consensus(NoMessageComm(4), build_graph("ring", 4), mixing_matrix(build_graph("ring", 4)), "plain")


def test_one_rank_world_returns_its_own_value_in_zero_rounds():
    graph = build_graph("ring", 1)
    consensus = Consensus(MPI.COMM_SELF, graph, mixing_matrix(graph), "plain", rounds=100, size=3)
    x = np.array([1.5, -2.0, 3.25])
    result = consensus.average(x, record_residuals=True)
    assert result.rounds == 0 and np.array_equal(result.value, x) and result.residuals == [0.0]
    consensus.free()
    flood = Flood(MPI.COMM_SELF, graph)
    assert flood.sum(2.5) == flood.minimum(2.5) == flood.maximum(2.5) == 2.5
    flood.free()


# ---------------------------------------------------------------------------- averaging


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("topology", ["ring", "path", "star", "complete"])
def test_each_algorithm_reaches_the_exact_average(comm, topology, algorithm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph(topology, n)
    W = mixing_matrix(graph)
    spectral_tol = 1e-13
    rounds = None if algorithm == "finite-time" else predicted_rounds(W, algorithm, spectral_tol)
    consensus = Consensus(comm, graph, W, algorithm, rounds=rounds, timeout_s=TIMEOUT_S, size=DIM)
    X = all_vectors(n, seed=17)
    x = X[rank].copy()
    result = consensus.average(x)
    summed = consensus.sum(x)
    consensus.free()
    all_rounds = comm.allgather(result.rounds)

    assert np.array_equal(x, X[rank])  # the input is not modified
    mean = X.mean(axis=0)
    if algorithm == "finite-time":
        assert result.rounds == len(finite_time_schedule(W))
        bound = 1e-12  # exact up to round-off
    else:
        assert result.rounds == rounds
        # Spectral bound: max_i |x_i - mean| <= |X_k - mean|_F <= tol |X_0 - mean|_F; plus round-off.
        bound = spectral_tol * np.linalg.norm(X - mean) / np.abs(mean).max() + 1e-12
    assert max_relative_error(result.value, mean) <= bound
    assert max_relative_error(summed.value, X.sum(axis=0)) <= bound
    assert all_rounds == [result.rounds] * n


@pytest.mark.mpi(min_size=3)
def test_plain_consensus_follows_the_spectral_rate(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("path", n)  # a path has |lambda_2| > 0 at every size >= 3
    W = mixing_matrix(graph)
    rounds = 30
    consensus = Consensus(comm, graph, W, "plain", rounds=rounds, timeout_s=TIMEOUT_S, size=DIM)
    X = all_vectors(n, seed=5)
    mean = X.mean(axis=0)
    errors: list[float] = []  # |X_k - mean|_F over all ranks, after k rounds

    def record(_: int, estimate: np.ndarray) -> None:
        errors.append(math.sqrt(comm.allreduce(float(np.sum((estimate - mean) ** 2)))))

    consensus.average(X[rank], on_round=record)
    consensus.free()

    # Closed form: X_k - mean = sum over eigenpairs (lambda, v) of lambda^k v v^T (X_0 - mean).
    values, vectors = np.linalg.eigh(W)
    components = np.linalg.norm(vectors.T @ (X - mean), axis=1)
    slem = np.sort(np.abs(values))[-2]
    slowest = np.linalg.norm(components[np.isclose(np.abs(values), slem)])
    for k, error in enumerate(errors):
        expected = math.sqrt(np.sum((values**k * components) ** 2))
        assert error == pytest.approx(expected, rel=1e-9, abs=1e-13)  # round-off only
        assert slowest * slem**k <= error * (1 + 1e-9) <= errors[0] * slem**k * (1 + 1e-9) + 1e-13


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ["plain", "chebyshev"])
def test_tolerance_mode_stops_every_rank_at_the_same_round_without_a_centre(comm, algorithm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("path", n)
    W = mixing_matrix(graph)
    tol = 1e-9
    X = all_vectors(n, seed=11)
    stopping = Consensus(comm, graph, W, algorithm, tol=tol, timeout_s=TIMEOUT_S, size=DIM)
    result = stopping.average(X[rank], record_residuals=True)
    stopping.free()
    fixed = Consensus(comm, graph, W, algorithm, rounds=result.rounds, timeout_s=TIMEOUT_S, size=DIM)
    same_rounds = fixed.average(X[rank])
    fixed.free()

    # The window's last slot is the graph-wide maximum disagreement D + 1 rounds before: every rank stops
    # at the first round k with max over ranks of residual[k - D - 1] <= tol.
    worst = np.max(comm.allgather(result.residuals), axis=0)
    first_agreed = int(np.argmax(worst <= tol))
    assert worst[first_agreed] <= tol and result.rounds == first_agreed + graph.diameter() + 1
    # The piggybacked maxima do not disturb the values: the same bits as a fixed-round run.
    assert np.array_equal(result.value, same_rounds.value)
    assert max_relative_error(result.value, X.mean(axis=0)) <= graph.diameter() * tol


@pytest.mark.mpi(min_size=2)
def test_residuals_measure_neighbour_disagreement_before_and_after(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("ring", n)
    W = mixing_matrix(graph)
    consensus = Consensus(comm, graph, W, "finite-time", timeout_s=TIMEOUT_S, size=DIM)
    X = all_vectors(n, seed=23)
    result = consensus.average(X[rank], record_residuals=True)
    consensus.free()
    initial = max(np.abs(X[j] - X[rank]).max() / max(np.abs(X[j]).max(), np.abs(X[rank]).max())
                  for j in graph.neighbours[rank])
    assert len(result.residuals) == result.rounds + 1
    assert result.residuals[0] == pytest.approx(initial, rel=1e-15)  # the same formula on the same data
    assert result.residuals[-1] <= 1e-13  # exact average on every rank: neighbours agree to round-off


@pytest.mark.mpi(min_size=2)
def test_flooded_scalar_sum_min_max_are_exact_and_identical_on_every_rank(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("path", n)
    flood = Flood(comm, graph, timeout_s=TIMEOUT_S)
    # 1e16 + 1 - 1e16 loses the 1 when summed left to right: only an exactly rounded sum gets these right.
    values = np.array([(1e16, 1.0, -1e16, 0.5)[r % 4] * (1 + r // 4) for r in range(n)])
    results = [flood.sum(values[rank]), flood.minimum(values[rank]), flood.maximum(values[rank])]
    repeated = [flood.sum(float(rank + step)) for step in range(3)]  # calls reuse the buffers
    flood.free()
    everyone = comm.allgather(results)
    assert results == [math.fsum(values), values.min(), values.max()]
    assert everyone == [results] * n
    assert repeated == [math.fsum(range(step, n + step)) for step in range(3)]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", ["path", "complete"])  # diameter n - 1 (several rounds), and 1
def test_a_flood_carries_each_ranks_payload_to_its_neighbours_in_the_first_round(comm, topology):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph(topology, n)
    flood = Flood(comm, graph, width=2, timeout_s=TIMEOUT_S, payload=3)
    tables, payloads = [], []
    for call in range(3):  # calls reuse the buffers
        table = flood.gather(np.array([rank, -call], dtype=float), payload=np.array([rank, call, 7.0]))
        tables.append(table.copy()), payloads.append([p.copy() for p in flood.payloads])
    flood.free()
    for call in range(3):
        np.testing.assert_array_equal(tables[call], np.stack([np.arange(n), np.full(n, -call)], 1))
        assert [p.tolist() for p in payloads[call]] == [[j, call, 7.0] for j in graph.neighbours[rank]]


# ---------------------------------------------------------------------------- deadlines and tags


@pytest.mark.mpi(min_size=2)
def test_deadline_names_the_rank_that_skips_a_round(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("ring", n)
    silent = n - 1
    consensus = Consensus(comm, graph, mixing_matrix(graph), "plain", rounds=n, timeout_s=SHORT_TIMEOUT_S, size=DIM)
    outcome: object = None
    if rank != silent:
        started = time.monotonic()
        try:
            consensus.average(np.ones(DIM))
        except NeighbourTimeout as err:
            outcome = err
        elapsed = time.monotonic() - started
        consensus.free()
    # The silent rank plays a crashed one and keeps its communicators: the others' messages wait there,
    # and freeing would let MPI hand its context to a later test's communicator.
    comm.Barrier()
    if rank != silent:
        assert isinstance(outcome, NeighbourTimeout)
        if silent in graph.neighbours[rank]:
            assert str(outcome).startswith(
                f"rank {rank}: neighbour {silent} did not answer round 1 of consensus call 1 within 0.5 s (comm.timeout_s)")
        # Ranks further away time out one round later, waiting on the neighbours that gave up.
        assert outcome.round <= n and elapsed < 10 * SHORT_TIMEOUT_S  # the deadline plus scheduling slack


@pytest.mark.mpi(min_size=2)
def test_tags_keep_rounds_and_calls_apart(comm):
    rank = comm.Get_rank()
    partner = {0: [1], 1: [0]}.get(rank, [])  # ranks beyond 1 take part in the collective set-up only

    def exchange(call_round: dict[int, tuple[int, int]], timeout_s: float) -> np.ndarray | NeighbourTimeout:
        link = NeighbourExchange(comm, partner, 4, timeout_s, name="tag test")
        outcome: np.ndarray | NeighbourTimeout = np.empty(0)
        if rank in call_round:
            call, round = call_round[rank]
            try:
                outcome = link.exchange(np.full(4, float(rank)), call=call, round=round)[0].copy()
            except NeighbourTimeout as err:
                outcome = err
        link.free()
        return outcome

    matched = exchange({0: (3, 7), 1: (3, 7)}, TIMEOUT_S)
    other_round = exchange({0: (1, 2), 1: (1, 1)}, SHORT_TIMEOUT_S)
    other_call = exchange({0: (2, 1), 1: (1, 1)}, SHORT_TIMEOUT_S)
    comm.Barrier()
    if rank in (0, 1):
        assert np.array_equal(matched, np.full(4, float(1 - rank)))
        assert isinstance(other_round, NeighbourTimeout) and other_round.silent == (1 - rank,)
        assert isinstance(other_call, NeighbourTimeout) and other_call.silent == (1 - rank,)
