"""The per-step gossip over real MPI ranks: one neighbour round per step, exact and identical on every rank.

Run under `mpiexec -n K python -m pytest --with-mpi -m mpi` (CI: K = 2 and 4). Each test runs on every
prefix sub-communicator of 2..K ranks, so K = 4 covers 2, 3 and 4 ranks. Every rank derives all
ranks' values from one seed, so each knows the exact answer without a message.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
from mpi4py import MPI

from odmar_mpi.comm.step_gossip import StepGossip
from odmar_mpi.comm.topology import build_graph

TIMEOUT_S = 20.0
STEPS = 12
WIDTH = 2


def step_values(n: int, steps: int) -> np.ndarray:
    """(steps, n, WIDTH): column 0 a reward whose left-to-right sum loses digits (1e16 + 1 - 1e16), column 1 a flag."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(steps, n, WIDTH))
    values[:, :, 0] *= np.where(np.arange(n) % 3 == 0, 1e16, 1.0)
    values[:, :, 1] = rng.random((steps, n)) < 0.1
    return values


@contextmanager
def prefixes(comm: MPI.Comm) -> Iterator[list[tuple[int, MPI.Comm | None]]]:
    """(size, sub-communicator of ranks 0..size-1, or None on ranks outside it) for size = 2..K."""
    subs = []
    for size in range(2, comm.Get_size() + 1):
        sub = comm.Split(0 if comm.Get_rank() < size else MPI.UNDEFINED, comm.Get_rank())
        subs.append((size, None if sub == MPI.COMM_NULL else sub))
    try:
        yield subs
    finally:
        for _, sub in subs:
            if sub is not None:
                sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", ["ring", "path", "star", "complete"])
def test_pipelined_team_reward_is_the_exact_sum_on_every_rank_after_diameter_minus_one_steps(comm, topology):
    with prefixes(comm) as subs:
        outcomes = []
        for n, sub in subs:
            if sub is None:
                continue
            rank, graph = sub.Get_rank(), build_graph(topology, n)
            values = step_values(n, STEPS)
            gossip = StepGossip(sub, graph, width=WIDTH, timeout_s=TIMEOUT_S)
            tables = [gossip.push(values[t, rank]) for t in range(STEPS)]
            gossip.free()
            sums = [None if table is None else math.fsum(table[:, 0].tolist()) for table in tables]
            delay = max(graph.diameter() - 1, 0)
            outcomes.append((n, delay, gossip.delay, tables, values, sub.allgather(sums)))
    for n, delay, reported_delay, tables, values, everyone in outcomes:
        assert reported_delay == delay
        assert all(table is None for table in tables[:delay])  # nothing is complete before the pipeline fills
        for t in range(delay, STEPS):
            # The table of call t is step t - delay's values of every rank, copied exactly.
            np.testing.assert_array_equal(tables[t], values[t - delay])
        assert everyone == [everyone[0]] * n  # the same sums, bit for bit, on every rank
        exact = [math.fsum(values[t, :, 0].tolist()) for t in range(STEPS - delay)]
        assert everyone[0][delay:] == exact


@pytest.mark.mpi(min_size=2)
def test_one_neighbour_round_per_step_and_the_message_size(comm):
    with prefixes(comm) as subs:
        checks = []
        for n, sub in subs:
            if sub is None:
                continue
            graph = build_graph("path", n)
            gossip = StepGossip(sub, graph, width=WIDTH, timeout_s=TIMEOUT_S)
            rounds = []
            original = gossip.exchange.exchange

            def counting(send, *, call, round, original=original):
                rounds.append((call, round))
                return original(send, call=call, round=round)

            gossip.exchange.exchange = counting
            for t in range(STEPS):
                gossip.push(np.zeros(WIDTH))
            gossip.free()
            checks.append((n, graph.diameter(), rounds, gossip.message_bytes))
    for n, diameter, rounds, message_bytes in checks:
        assert rounds == [(t, 1) for t in range(1, STEPS + 1)]  # exactly one exchange round per step
        assert message_bytes == diameter * n * WIDTH * 8


@pytest.mark.mpi(min_size=2)
def test_state_round_trip_continues_the_pipeline_identically(comm):
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("path", n)
    values = step_values(n, STEPS)
    straight = StepGossip(comm, graph, width=WIDTH, timeout_s=TIMEOUT_S)
    expected = [straight.push(values[t, rank]) for t in range(STEPS)]
    straight.free()
    first = StepGossip(comm, graph, width=WIDTH, timeout_s=TIMEOUT_S)
    got = [first.push(values[t, rank]) for t in range(STEPS // 2)]
    state = first.state_dict()
    first.free()
    second = StepGossip(comm, graph, width=WIDTH, timeout_s=TIMEOUT_S)
    second.load_state_dict(state)
    got += [second.push(values[t, rank]) for t in range(STEPS // 2, STEPS)]
    second.free()
    for a, b in zip(expected, got):
        assert (a is None and b is None) or np.array_equal(a, b)


@pytest.mark.mpi(min_size=2)
def test_clearing_a_column_zeroes_it_for_every_step_in_flight_and_keeps_the_rest(comm):
    # What a resumed run does to the stop flags of the run it continues: the steps pushed before the state
    # was saved come out with flag 0 and their rewards intact; steps pushed afterwards are untouched.
    n, rank = comm.Get_size(), comm.Get_rank()
    graph = build_graph("path", n)  # diameter n - 1: up to n - 2 steps in flight
    values = step_values(n, STEPS)
    values[:, :, 1] = 1.0
    straight = StepGossip(comm, graph, width=WIDTH, timeout_s=TIMEOUT_S)
    expected = [straight.push(values[t, rank]) for t in range(STEPS)]
    straight.free()
    gossip = StepGossip(comm, graph, width=WIDTH, timeout_s=TIMEOUT_S)
    saved_after = STEPS // 2
    for t in range(saved_after):
        gossip.push(values[t, rank])
    gossip.clear(1)
    got = [gossip.push(values[t, rank]) for t in range(saved_after, STEPS)]
    gossip.free()
    in_flight = gossip.delay
    for k, (a, b) in enumerate(zip(expected[saved_after:], got)):
        np.testing.assert_array_equal(b[:, 0], a[:, 0])
        assert np.all(b[:, 1] == (0.0 if k < in_flight else 1.0)), (k, b[:, 1])


def test_a_single_rank_gets_its_own_values_at_once():
    gossip = StepGossip(MPI.COMM_SELF, build_graph("ring", 1), width=WIDTH)
    assert gossip.delay == 0 and gossip.message_bytes == 0
    np.testing.assert_array_equal(gossip.push([1.5, 0.0]), [[1.5, 0.0]])
    gossip.free()
