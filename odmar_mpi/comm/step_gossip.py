"""Per-step values of every rank on every rank, for one neighbour round per step at any rank count.

A flood needs D rounds (D = graph diameter) before every rank has heard every rank. Done every step
that is D rounds per step: 32 on a 64-rank ring. Pipelined, each step sends ONE message per neighbour
that carries this step's own values and forwards what the rank knows of the previous D - 1 steps, so
each step's values travel one hop further per step:

    window[s] (s = 0..D) = what this rank knows of the values of the step pushed s calls ago,
                           after s hops: rows of ranks within distance s, NaN elsewhere.

A call puts the own values into window[0], sends window[0..D-1] to the neighbours, and shifts:
window[s + 1] <- fmin(window[s], every neighbour's window[s]). Then window[D] has travelled D hops: it
is complete, and it is the same table on every rank, bit for bit (rows are copied, never combined).
So a step's values are known everywhere D - 1 steps after they were pushed (at once when D = 1),
at one round of D * n * width float64 per neighbour per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.exchange import NeighbourExchange
from odmar_mpi.comm.topology import Graph


class StepGossip:
    """Pipelined gather of `width` float64 values per rank per step. Collective: every rank constructs it with
    the same graph and width and calls `push` once per step."""

    def __init__(self, comm: MPI.Comm, graph: Graph, *, width: int, timeout_s: float = 60.0) -> None:
        self.rank, self.n, self.width = comm.Get_rank(), graph.n, width
        self.depth = graph.diameter()
        self.window = np.full((self.depth + 1, self.n, width), np.nan)
        self.calls = 0
        self.exchange = (NeighbourExchange(comm, graph.neighbours[self.rank], self.depth * self.n * width, timeout_s,
                                           name="step gossip") if self.depth else None)

    @property
    def delay(self) -> int:
        """Steps between pushing a step's values and getting that step's complete table back."""
        return max(self.depth - 1, 0)

    @property
    def message_bytes(self) -> int:
        """Bytes sent to each neighbour per step."""
        return self.depth * self.n * self.width * 8

    def push(self, values: np.ndarray | list[float]) -> np.ndarray | None:
        """Push this step's values (width,); return the complete (n, width) table of the step pushed `delay`
        calls ago (row r = rank r's values; a new array), or None while no step is complete yet."""
        self.calls += 1
        window = self.window
        window[0].fill(np.nan)
        window[0, self.rank] = values
        if self.exchange is None:  # a single rank: nothing to wait for
            return window[0].copy()
        received = self.exchange.exchange(window[:self.depth].reshape(-1), call=self.calls, round=1)
        for s in range(self.depth - 1, -1, -1):  # from the oldest, so window[s] is read before it is overwritten
            np.copyto(window[s + 1], window[s])
            for buffer in received:
                np.fmin(window[s + 1], buffer.reshape(self.depth, self.n, self.width)[s], out=window[s + 1])
        return window[self.depth].copy() if self.calls >= self.depth else None

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.copy(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        window = np.asarray(state["window"])
        if window.shape != self.window.shape:
            raise ValueError(f"step gossip state has shape {window.shape}, this graph needs {self.window.shape}: "
                             "resume with the rank count and topology the run was made with.")
        self.window[...] = window
        self.calls = int(state["calls"])

    def clear(self, column: int) -> None:
        """Zero one of the values of every step still in flight (rows not yet heard stay NaN), e.g. a flag that
        must not outlive the process that raised it."""
        heard = ~np.isnan(self.window[:, :, column])
        self.window[:, :, column][heard] = 0.0

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for neighbours, all calls."""
        return self.exchange.waited_s if self.exchange is not None else 0.0

    def free(self) -> None:
        if self.exchange is not None:
            self.exchange.free()
