"""Decentralised averaging of one flat float64 buffer per rank, over neighbour exchanges only.

Round k computes x <- a_k (W x) + b_k x + c_k x_prev (coefficients from `weights.round_coefficients`),
with W applied in place from the neighbours' buffers. Algorithms:

- plain: x <- W x, for `rounds` rounds or until `tol`;
- chebyshev: the Chebyshev semi-iterative recurrence tuned to W's non-unit eigenvalue interval;
- finite-time: the K Leja-ordered factors (W - l_k) / (1 - l_k); exact average after K rounds.

Tolerance mode (plain/chebyshev with `tol`): every rank stops at the same round with no central
process. Each message carries, after the values, a window of D + 1 running maxima (D = diameter):
slot s holds the largest local disagreement of s + 1 rounds ago over ranks within s hops. Slot D thus
holds the same graph-wide maximum on every rank, D + 1 rounds late; all ranks stop when it is <= tol.
The local disagreement of rank i is max_j |x_j - x_i|_inf / max(|x_i|_inf, |x_j|_inf) over its
neighbours j; the distance to the average is at most about D times it.

Scalars (team reward, agreed flags and steps) take other paths: `flood.Flood` and
`step_gossip.StepGossip`, exact and bit-identical on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.exchange import NeighbourExchange
from odmar_mpi.comm.limits import MAX_ROUNDS, MIN_TOL
from odmar_mpi.comm.topology import Graph, TopologyError, validate_graph
from odmar_mpi.comm.weights import (ALGORITHMS, check_mixing_matrix, finite_time_schedule, predicted_rounds,
                                    round_coefficients)

TOL_CAP_FACTOR = 10  # tol mode without `rounds`: stop after 10x the spectral prediction (+ D) even if not agreed

__all__ = ["ALGORITHMS", "Consensus", "ConsensusResult"]


def read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass
class ConsensusResult:
    """value: this rank's estimate, shape (size,), a new array; rounds: rounds run (equal on every rank);
    residuals: when requested, entry k = this rank's local disagreement after k rounds, k = 0..rounds."""

    value: np.ndarray
    rounds: int
    residuals: list[float] = field(default_factory=list)


class Consensus:
    """Average flat float64 buffers of length `size` over `graph` with mixing matrix `weights`.

    Collective: every rank of comm constructs it with the same arguments (comm's size must equal
    graph.n), and calls the same methods in the same order. `rounds` (plain/chebyshev) is the
    number of rounds, or with `tol` the most rounds; finite-time always runs its K rounds and
    ignores both. Raises TopologyError / WeightsError / ValueError before any message is sent;
    exchanges raise NeighbourTimeout after `timeout_s` without an answer (the caller aborts).
    """

    def __init__(self, comm: MPI.Comm, graph: Graph, weights: np.ndarray, algorithm: str = "finite-time",
                 rounds: int | None = None, tol: float | None = None, timeout_s: float = 60.0, size: int = 1) -> None:
        if comm.Get_size() != graph.n:
            raise TopologyError(f"the graph has {graph.n} ranks but the job runs {comm.Get_size()}; "
                                f"build the graph for {comm.Get_size()} ranks (or launch {graph.n}).")
        validate_graph(graph)
        check_mixing_matrix(weights, graph)
        if algorithm not in ALGORITHMS:
            raise ValueError(f'comm.algorithm = "{algorithm}" is not known; choose one of {", ".join(ALGORITHMS)}.')
        if size < 1:
            raise ValueError(f"consensus buffer size must be >= 1 float64; got {size}.")
        self.rank, self.n, self.size = comm.Get_rank(), graph.n, size
        self.neighbours = graph.neighbours[self.rank]
        self.diameter = graph.diameter()
        self.self_weight = float(weights[self.rank, self.rank])
        self.neighbour_weights = np.array([weights[self.rank, j] for j in self.neighbours])
        self.algorithm = algorithm
        self.tol = None if algorithm == "finite-time" else tol
        self.max_rounds = self.schedule_length(weights, rounds)
        self.coefficients = round_coefficients(weights, algorithm, self.max_rounds)

        # Tol mode appends the window of D + 1 running maxima to every message.
        self.window = self.diameter + 1 if self.tol is not None else 0
        packet = size + self.window
        self.buffers = [np.zeros(packet) for _ in range(3)]  # current, next, previous (Chebyshev) iterate
        self.scratch = np.empty(size)
        self.values = NeighbourExchange(comm, self.neighbours, packet, timeout_s, name="consensus")
        self.calls = 0

    def schedule_length(self, weights: np.ndarray, rounds: int | None) -> int:
        if self.n == 1:
            return 0
        if self.algorithm == "finite-time":
            return len(finite_time_schedule(weights))
        if self.tol is not None:
            if not MIN_TOL <= self.tol < 1:
                raise ValueError(f"comm.tol = {self.tol}: must be in [{MIN_TOL}, 1) (float64 round-off sets the floor).")
            if rounds is None:
                cap = TOL_CAP_FACTOR * predicted_rounds(weights, self.algorithm, self.tol) + self.diameter
                rounds = min(cap, MAX_ROUNDS)
        if rounds is None or rounds < 1:
            raise ValueError(f'comm.algorithm = "{self.algorithm}" needs comm.rounds >= 1 or comm.tol > 0; '
                             f'got rounds = {rounds} (or use comm.algorithm = "finite-time").')
        if rounds > MAX_ROUNDS:
            raise ValueError(f"comm.rounds = {rounds}: at most {MAX_ROUNDS} rounds per consensus call.")
        return int(rounds)

    # ------------------------------------------------------------------ vectors

    def average(self, x: np.ndarray, *, record_residuals: bool = False, final_residual: bool = True,
                on_round: Callable[[int, np.ndarray], None] | None = None) -> ConsensusResult:
        """This rank's estimate of the average over ranks of x (shape (size,), float64); x is not modified.

        record_residuals: also measure the local disagreement before each round, from what the round
        received, and (with final_residual) after the last one, which costs one extra exchange. on_round(k, estimate) is called after k = 0..rounds
        rounds with a read-only view of this rank's current estimate (for benchmarks; every rank
        calls it at the same k, so it may be collective).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.size,):
            raise ValueError(f"consensus input must have shape ({self.size},); got {x.shape}.")
        self.calls += 1
        current, following, previous = self.buffers
        current[:self.size] = x
        if self.window:
            current[self.size:] = np.inf  # no disagreement measured yet: nothing may stop early
        residuals: list[float] = []
        measure = record_residuals or self.window > 0
        rounds = 0
        while rounds < self.max_rounds:
            if on_round is not None:
                on_round(rounds, read_only(current[:self.size]))
            received = self.values.exchange(current, call=self.calls, round=rounds + 1)
            if measure:
                disagreement = self.disagreement(current, received)
                if record_residuals:
                    residuals.append(disagreement)
            if self.window:
                self.shift_window(following, current, received, disagreement)
            self.mix(following, current, previous, received, self.coefficients[rounds])
            current, following, previous = following, previous, current
            rounds += 1
            if self.window and current[-1] <= self.tol:  # slot D: the same graph-wide maximum on every rank
                break
        if on_round is not None:
            on_round(rounds, read_only(current[:self.size]))
        if record_residuals and final_residual:
            received = self.values.exchange(current, call=self.calls, round=rounds + 1)
            residuals.append(self.disagreement(current, received))
        self.buffers = [current, following, previous]
        return ConsensusResult(current[:self.size].copy(), rounds, residuals)

    def sum(self, x: np.ndarray, **kw) -> ConsensusResult:
        """n times `average(x, **kw)`: this rank's estimate of the sum over ranks."""
        result = self.average(x, **kw)
        result.value *= self.n
        return result

    def mix(self, out: np.ndarray, current: np.ndarray, previous: np.ndarray, received: list[np.ndarray],
            coefficients: np.ndarray) -> None:
        """out = a (W x) + b x + c x_prev on the value part, in place (received buffers are scaled in place)."""
        a, b, c = coefficients
        size = self.size
        np.multiply(current[:size], a * self.self_weight + b, out=out[:size])
        for buffer, weight in zip(received, self.neighbour_weights):
            np.multiply(buffer[:size], a * weight, out=buffer[:size])
            np.add(out[:size], buffer[:size], out=out[:size])
        if c:
            np.multiply(previous[:size], c, out=previous[:size])
            np.add(out[:size], previous[:size], out=out[:size])

    def disagreement(self, current: np.ndarray, received: list[np.ndarray]) -> float:
        """max over neighbours j of |x_j - x_i|_inf / max(|x_i|_inf, |x_j|_inf); 0 when all are zero, NaN for NaN data."""
        size, scratch = self.size, self.scratch
        own = np.abs(current[:size]).max()
        worst = np.float64(0.0)
        for buffer in received:
            np.subtract(buffer[:size], current[:size], out=scratch)
            gap = np.abs(scratch, out=scratch).max()
            if gap != 0:  # np.maximum, unlike max(), keeps a NaN
                worst = np.maximum(worst, gap / np.maximum(own, np.abs(buffer[:size], out=scratch).max()))
        return float(worst)

    def shift_window(self, out: np.ndarray, current: np.ndarray, received: list[np.ndarray], disagreement: float) -> None:
        """out's window: slot 0 = own disagreement now, slot s = max(own and neighbours' slot s - 1)."""
        window = out[self.size:]
        window[1:] = current[self.size:-1]
        for buffer in received:
            np.maximum(window[1:], buffer[self.size:-1], out=window[1:])
        window[0] = disagreement

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for neighbours, all calls."""
        return self.values.waited_s

    def free(self) -> None:
        """Release the communicator; every rank calls it."""
        self.values.free()


class VectorGossip:
    """The handle a learner gossips through: consensus over whatever flat buffers it hands in.

    One `Consensus` per (buffer size, kind), built on first use. Collective: every rank asks for the
    same sizes in the same order (learners call it at the same step on every rank, by construction).
    """

    def __init__(self, comm: MPI.Comm, graph: Graph, weights: np.ndarray, *, algorithm: str,
                 rounds: int | None, tol: float | None, timeout_s: float) -> None:
        self.comm, self.graph, self.weights = comm, graph, weights
        self.settings = dict(algorithm=algorithm, rounds=rounds, tol=tol, timeout_s=timeout_s)
        self.timeout_s = timeout_s
        self.n = graph.n
        self.pool: dict[int, Consensus] = {}
        self.mixers: dict[tuple[int, int], Consensus] = {}

    def consensus(self, size: int) -> Consensus:
        if size not in self.pool:
            self.pool[size] = Consensus(self.comm, self.graph, self.weights, size=size, **self.settings)
        return self.pool[size]

    def mix(self, x: np.ndarray, rounds: int = 1) -> ConsensusResult:
        """`rounds` rounds of x <- W x with this rank's neighbours (the averaging step of decentralised SGD,
        D-PSGD): value = this rank's row of W^rounds applied to every rank's x (a new array); residuals[k] =
        the local disagreement before round k, measured from what that round received (no extra message)."""
        key = (x.size, rounds)
        if key not in self.mixers:
            self.mixers[key] = Consensus(self.comm, self.graph, self.weights, "plain", rounds=rounds,
                                         timeout_s=self.timeout_s, size=x.size)
        return self.mixers[key].average(x, record_residuals=True, final_residual=False)

    def average(self, x: np.ndarray, **kw) -> ConsensusResult:
        """This rank's estimate of the average over ranks of x (see Consensus.average)."""
        return self.consensus(x.size).average(x, **kw)

    def sum(self, x: np.ndarray, **kw) -> ConsensusResult:
        """This rank's estimate of the sum over ranks of x (see Consensus.sum)."""
        return self.consensus(x.size).sum(x, **kw)

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for neighbours, all consensus and mixing calls."""
        return sum(consensus.waited_s for consensus in (*self.pool.values(), *self.mixers.values()))

    def free(self) -> None:
        for consensus in (*self.pool.values(), *self.mixers.values()):
            consensus.free()
