"""Every rank's few values on every rank, by flooding over the graph for D rounds (D = diameter).

Each rank keeps an (n, width) table, NaN where it has not heard yet; every round it sends the table
to its neighbours and merges theirs with fmin (which skips NaN). Each row has one source, so merging
copies values unchanged: after D rounds every rank holds the same table, bit for bit, and reduces
it locally (math.fsum, min, max). Costs D rounds of n * width float64 per neighbour: meant for small
things (a joint action, a stop flag, an agreed step), not for model statistics.

A flood may carry a payload for the neighbours themselves in its first round (e.g. what a learner tells
its neighbours each step along with the joint action): one message per neighbour instead of two.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.exchange import NeighbourExchange
from odmar_mpi.comm.topology import Graph


class Flood:
    """Gather `width` float64 values from every rank. Collective: every rank of comm constructs it with the
    same graph and width, and calls `gather` (or a scalar reduction) the same number of times."""

    def __init__(self, comm: MPI.Comm, graph: Graph, *, width: int = 1, timeout_s: float = 60.0,
                 name: str = "flood", payload: int = 0) -> None:
        """`payload`: float64 values each call may send its neighbours in the first round (`gather(payload=)`)."""
        self.rank, self.n, self.width = comm.Get_rank(), graph.n, width
        self.diameter = graph.diameter()
        self.table_size = self.n * width
        self.message = np.empty(self.table_size + payload)  # [the table | the payload]
        self.known = self.message[:self.table_size].reshape(self.n, width)
        self.payload = payload
        self.exchange = NeighbourExchange(comm, graph.neighbours[self.rank], self.table_size + payload, timeout_s,
                                          name=name)
        self.payloads = [np.empty(payload) for _ in graph.neighbours[self.rank]]
        self.calls = 0

    def gather(self, values: np.ndarray | float, payload: np.ndarray | None = None) -> np.ndarray:
        """Row r = rank r's `values` (shape (width,)), the same table on every rank. With a payload flood, also
        sends `payload` ((payload,) float64) to each neighbour; theirs are in `payloads` afterwards, in neighbour
        order. The arrays are reused by the next call: copy what must outlive it."""
        self.calls += 1
        known, flat = self.known, self.message[:self.table_size]
        known.fill(np.nan)
        known[self.rank] = values
        if self.payload:
            self.message[self.table_size:] = payload
        for round in range(1, max(self.diameter, 1 if self.payload else 0) + 1):
            received = self.exchange.exchange(self.message, call=self.calls, round=round)
            for k, buffer in enumerate(received):
                np.fmin(flat, buffer[:self.table_size], out=flat)
                if round == 1 and self.payload:
                    self.payloads[k][:] = buffer[self.table_size:]
        return known

    def sum(self, v: float) -> float:
        """Exact (correctly rounded) sum over ranks of v, bit-identical on every rank."""
        return math.fsum(self.gather(v)[:, 0].tolist())

    def minimum(self, v: float) -> float:
        return float(self.gather(v)[:, 0].min())

    def maximum(self, v: float) -> float:
        return float(self.gather(v)[:, 0].max())

    def barrier(self) -> None:
        """Returns on every rank only after every rank has called it (a gather waits for all of them)."""
        self.gather(0.0)

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for neighbours, all calls."""
        return self.exchange.waited_s

    def free(self) -> None:
        self.exchange.free()
