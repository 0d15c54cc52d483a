"""One round of neighbour exchange over MPI, with a deadline.

Every rank sends one flat float64 buffer to each neighbour and receives each neighbour's into a
preallocated buffer (buffer methods, no pickling). A neighbour that has not answered by the
deadline raises NeighbourTimeout naming this rank, the neighbour and the round; this module never
aborts: the entry point's excepthook turns the exception into MPI Abort, so no rank waits forever.

Waiting polls the requests for `SPIN_S` (a neighbour on a core of its own answers within microseconds),
then yields the core between polls for `YIELD_S` (a neighbour sharing the core runs at once: per-step
exchanges stay fast when ranks outnumber cores), then sleeps between polls, from `SLEEP_MIN_S` doubling up
to `SLEEP_MAX_S`: a rank waiting long (for a neighbour still training) must give its core to the ranks it
waits for, and a yielding process still takes its share of a busy core. Large messages are not slowed by
the sleeps (MPICH copies them in one piece once both sides have posted). Every exchange adds the seconds
it waited to `waited_s`.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
from mpi4py import MPI

from odmar_mpi.comm.limits import ROUND_SPAN


# Buffers of rounds abandoned at a deadline. MPI may still read or write them (a cancel need not
# succeed), so they must outlive their exchange: kept here for the life of the process.
_ABANDONED: list[object] = []

SPIN_S = 20e-6
"""Poll without giving up the core for this long (a neighbour on a core of its own answers within microseconds)."""
YIELD_S = float(os.environ.get("ODMAR_MPI_YIELD_S", 2e-3))
"""Then poll with sched_yield for this long: a neighbour on the same core gets it at once (a neighbour that is
only a step behind arrives within this), but a yielding process still takes its share of a busy core."""
SLEEP_MIN_S, SLEEP_MAX_S = 50e-6, 1e-3
"""Then sleep between polls, doubling from SLEEP_MIN_S to SLEEP_MAX_S: a long wait (a neighbour still training)
leaves the core to the ranks that work, at one poll per millisecond."""


def wait_all(requests: list[MPI.Request], deadline: float) -> bool:
    """Complete every request, polling busily, then yielding, then sleeping between polls; False once `deadline`
    (time.monotonic) has passed with some request pending."""
    if MPI.Request.Testall(requests):
        return True
    start = time.monotonic()
    while (waited := time.monotonic() - start) < SPIN_S + YIELD_S:
        if MPI.Request.Testall(requests):
            return True
        if waited > SPIN_S:
            os.sched_yield()
    sleep = SLEEP_MIN_S
    while not MPI.Request.Testall(requests):
        if time.monotonic() > deadline:
            return False
        time.sleep(sleep)
        sleep = min(2 * sleep, SLEEP_MAX_S)
    return True


class NeighbourTimeout(RuntimeError):
    """A neighbour did not complete a round of exchange within the deadline."""

    def __init__(self, rank: int, silent: Sequence[int], round: int, call: int, name: str, timeout_s: float) -> None:
        self.rank, self.silent, self.round, self.call = rank, tuple(silent), round, call
        others = f" (also silent: {', '.join(map(str, silent[1:]))})" if len(silent) > 1 else ""
        super().__init__(
            f"rank {rank}: neighbour {silent[0]} did not answer round {round} of {name} call {call} within "
            f"{timeout_s:g} s (comm.timeout_s){others}; it may have crashed or be stuck. Look for an error "
            f"from rank {silent[0]} above; if it is only slow (a busy or oversubscribed machine), raise comm.timeout_s."
        )


class NeighbourExchange:
    """Exchange of one `size`-float64 buffer with each neighbour, per round. Construction is collective over comm.

    The neighbours must be symmetric across ranks (rank j lists i exactly when i lists j), as a
    `Graph`'s are. Sends and receives use a dist-graph communicator of their own, so no other
    traffic can match them; tags encode the call and round, so two rounds or calls cannot be confused.
    """

    def __init__(self, comm: MPI.Comm, neighbours: Sequence[int], size: int, timeout_s: float,
                 *, name: str = "consensus") -> None:
        if size < 1:
            raise ValueError(f"exchange buffer size must be >= 1 float64; got {size}.")
        if not timeout_s > 0:
            raise ValueError(f"comm.timeout_s = {timeout_s}: must be > 0 seconds.")
        self.neighbours = tuple(int(j) for j in neighbours)
        self.size, self.timeout_s, self.name = size, timeout_s, name
        self.rank = comm.Get_rank()
        self.recv_buffers = [np.empty(size, dtype=np.float64) for _ in self.neighbours]
        self.comm = comm.Create_dist_graph_adjacent(self.neighbours, self.neighbours, reorder=False)
        self.tag_span = self.comm.Get_attr(MPI.TAG_UB) + 1
        self.timed_out = False
        self.waited_s = 0.0  # seconds spent waiting for the neighbours, all calls

    def tag(self, call: int, round: int) -> int:
        return (call * ROUND_SPAN + round) % self.tag_span

    def exchange(self, send: np.ndarray, *, call: int, round: int) -> list[np.ndarray]:
        """Send `send` (contiguous float64, shape (size,)) to every neighbour; return their buffers, in
        `neighbours` order. The returned arrays are reused by the next round: copy what must outlive it.

        Raises NeighbourTimeout (after cancelling its receives and freeing its requests) if any receive or send
        (large sends complete only when received) is still pending after timeout_s.
        """
        if send.dtype != np.float64 or send.shape != (self.size,) or not send.flags.c_contiguous:
            raise ValueError(f"{self.name}: send buffer must be contiguous float64 of shape ({self.size},); "
                             f"got {send.dtype} {send.shape}.")
        tag = self.tag(call, round)
        requests = [self.comm.Irecv(buffer, source=j, tag=tag) for j, buffer in zip(self.neighbours, self.recv_buffers)]
        requests += [self.comm.Isend(send, dest=j, tag=tag) for j in self.neighbours]
        start = time.perf_counter()
        done = wait_all(requests, time.monotonic() + self.timeout_s)
        self.waited_s += time.perf_counter() - start
        if not done:
            self.give_up(requests, send, call, round)
        return self.recv_buffers

    def give_up(self, requests: list[MPI.Request], send: np.ndarray, call: int, round: int) -> None:
        """Cancel the round's receives, free all its requests, keep its buffers alive, raise NeighbourTimeout."""
        degree = len(self.neighbours)
        silent = [j for k, j in enumerate(self.neighbours)
                  if not requests[k].Test() or not requests[degree + k].Test()]
        for k, request in enumerate(requests):
            if request != MPI.REQUEST_NULL:
                if k < degree:  # receives only: cancelling a pending large send crashes MPICH 5.0
                    request.Cancel()
                request.Free()
        _ABANDONED.append((send, self.recv_buffers))
        self.timed_out = True
        raise NeighbourTimeout(self.rank, silent or list(self.neighbours), round, call, self.name, self.timeout_s)

    def free(self) -> None:
        """Release the communicator; every rank of the exchange calls it.

        After a timeout the communicator is kept: late messages may still arrive on it, and MPI
        reuses a freed communicator's context for the next one, where they would be matched. A rank
        that stopped exchanging while its neighbours went on (a crashed or stuck one) holds such
        messages too; in production the job aborts, and a test simulating it must not free there.
        """
        if self.comm != MPI.COMM_NULL and not self.timed_out:
            self.comm.Free()
