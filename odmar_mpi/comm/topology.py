"""Communication graphs as plain data: who talks to whom. Pure numpy, no MPI.

A `Graph` is an undirected adjacency list over ranks 0..n-1. `build_graph(name, n)` makes one of the
named topologies and refuses, with a message naming the problem and the fix, any graph that does not
fit n ranks or is not connected, before any rank sends a message.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

TOPOLOGIES: tuple[str, ...] = (
    "ring", "path", "star", "grid", "torus", "complete", "hypercube", "exponential",
    "random-geometric", "erdos-renyi", "edges",
)
DEFAULT_RADIUS = 0.5  # random-geometric: connection radius in the unit square
DEFAULT_EDGE_PROBABILITY = 0.5  # erdos-renyi
RANDOM_DRAW_HINTS = {
    "random-geometric": " (a seeded draw: raise comm.radius or pick another run.seed)",
    "erdos-renyi": " (a seeded draw: raise comm.edge_probability or pick another run.seed)",
}


class TopologyError(ValueError):
    """A graph that cannot be used: wrong size, not connected, malformed edge list."""


@dataclass(frozen=True)
class Graph:
    """Undirected graph on ranks 0..n-1.

    `neighbours[i]` lists rank i's neighbours, sorted, without i itself or duplicates; j is in
    neighbours[i] exactly when i is in neighbours[j]. A 2-rank ring is one edge (0, 1).
    """

    n: int
    neighbours: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.n < 1:
            raise TopologyError(f"a graph needs at least 1 rank; got n = {self.n}.")
        if len(self.neighbours) != self.n:
            raise TopologyError(f"graph of {self.n} ranks has {len(self.neighbours)} neighbour lists; give one per rank.")
        for i, row in enumerate(self.neighbours):
            if list(row) != sorted(set(row)):
                raise TopologyError(f"neighbours of rank {i} must be sorted and distinct; got {row}.")
            for j in row:
                if not 0 <= j < self.n or j == i:
                    raise TopologyError(f"rank {i} lists neighbour {j}; neighbours are other ranks in 0..{self.n - 1}.")
                if i not in self.neighbours[j]:
                    raise TopologyError(f"rank {i} lists {j} as a neighbour but rank {j} does not list {i}; "
                                        "edges are undirected.")

    @classmethod
    def from_edges(cls, n: int, edges: Iterable[tuple[int, int]]) -> Graph:
        """Graph on n ranks from undirected edges (i, j), i != j; repeats and both directions are merged."""
        adjacency: list[set[int]] = [set() for _ in range(max(n, 0))]
        for i, j in edges:
            if not (0 <= i < n and 0 <= j < n):
                raise TopologyError(f"edge ({i}, {j}) names a rank outside 0..{n - 1}.")
            if i == j:
                raise TopologyError(f"edge ({i}, {j}) is a self loop; every rank already keeps its own value.")
            adjacency[i].add(j)
            adjacency[j].add(i)
        return cls(n, tuple(tuple(sorted(row)) for row in adjacency))

    def degree(self, i: int) -> int:
        return len(self.neighbours[i])

    def edges(self) -> tuple[tuple[int, int], ...]:
        """Each undirected edge once, as (i, j) with i < j, in lexicographic order."""
        return tuple((i, j) for i, row in enumerate(self.neighbours) for j in row if i < j)

    def distances_from(self, source: int) -> list[int]:
        """Hop counts from `source` by breadth-first search; -1 for ranks it cannot reach."""
        distance = [-1] * self.n
        distance[source] = 0
        queue = deque([source])
        while queue:
            i = queue.popleft()
            for j in self.neighbours[i]:
                if distance[j] < 0:
                    distance[j] = distance[i] + 1
                    queue.append(j)
        return distance

    def is_connected(self) -> bool:
        return min(self.distances_from(0)) >= 0

    def diameter(self) -> int:
        """Longest shortest path in hops (0 for one rank). Raises TopologyError if not connected."""
        validate_graph(self)
        return max(max(self.distances_from(i)) for i in range(self.n))

    def adjacency(self) -> np.ndarray:
        """(n, n) bool adjacency matrix, symmetric, False on the diagonal."""
        matrix = np.zeros((self.n, self.n), dtype=bool)
        for i, row in enumerate(self.neighbours):
            matrix[i, list(row)] = True
        return matrix


def validate_graph(graph: Graph) -> None:
    """Refuse a graph consensus cannot use: one that is not connected. Names the unreachable ranks."""
    distance = graph.distances_from(0)
    unreachable = [i for i, d in enumerate(distance) if d < 0]
    if not unreachable:
        return
    isolated = [i for i in range(graph.n) if graph.degree(i) == 0]
    if isolated:
        raise TopologyError(f"rank {isolated[0]} has no neighbours; the graph must be connected "
                            f"(add an edge to rank {isolated[0]}).")
    shown = ", ".join(map(str, unreachable[:8])) + (", ..." if len(unreachable) > 8 else "")
    raise TopologyError(f"ranks {shown} cannot be reached from rank 0; the graph must be connected "
                        f"(add an edge between rank {unreachable[0]}'s group and rank 0's).")


# ---------------------------------------------------------------------------- named topologies


def ring(n: int) -> Graph:
    """Cycle i -- i+1 mod n (2 ranks: one edge; 1 rank: no edge)."""
    return Graph.from_edges(n, [(i, (i + 1) % n) for i in range(n) if n > 1])


def path(n: int) -> Graph:
    return Graph.from_edges(n, [(i, i + 1) for i in range(n - 1)])


def star(n: int) -> Graph:
    """Rank 0 in the centre, every other rank a leaf."""
    return Graph.from_edges(n, [(0, i) for i in range(1, n)])


def complete(n: int) -> Graph:
    return Graph.from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n)])


def grid_shape(n: int) -> tuple[int, int]:
    """rows x cols = n, rows <= cols, as square as possible; refuses n > 1 without a factorisation into sides >= 2."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    if rows < 2 and n > 1:
        raise TopologyError(f"{n} ranks cannot form a rows x cols grid with both sides >= 2; use a rank count "
                            "that factors (4, 6, 8, 9, 10, 12, ...) or another topology (e.g. ring).")
    return rows, n // rows


def grid(n: int, *, wrap: bool = False) -> Graph:
    """2-D grid, rank = row * cols + col, neighbours up/down/left/right (wrap=True: a torus)."""
    rows, cols = grid_shape(n)
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols or wrap:
                edges.append((i, r * cols + (c + 1) % cols))
            if r + 1 < rows or wrap:
                edges.append((i, ((r + 1) % rows) * cols + c))
    return Graph.from_edges(n, [(i, j) for i, j in edges if i != j])


def hypercube(n: int) -> Graph:
    """Ranks differing in one bit are neighbours; n must be a power of two."""
    if n & (n - 1):
        below, above = 1 << (n.bit_length() - 1), 1 << n.bit_length()
        raise TopologyError(f"a hypercube needs a power-of-two rank count; got {n} (use {below} or {above} ranks, "
                            'or topology "exponential", which fits any count).')
    return Graph.from_edges(n, [(i, i ^ (1 << b)) for i in range(n) for b in range(n.bit_length() - 1)])


def exponential(n: int) -> Graph:
    """Undirected exponential graph: i -- i + 2^k mod n for every 2^k < n."""
    hops = [1 << k for k in range(max(n - 1, 1).bit_length()) if (1 << k) < n]
    return Graph.from_edges(n, [(i, (i + h) % n) for i in range(n) for h in hops if (i + h) % n != i])


def random_geometric(n: int, seed: int, radius: float) -> Graph:
    """n points uniform in the unit square (seeded); an edge where two lie within `radius`."""
    if not radius > 0:
        raise TopologyError(f"comm.radius = {radius}: the connection radius must be > 0 (try 0.5).")
    points = np.random.default_rng(seed).random((n, 2))
    close = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1) <= radius
    return Graph.from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n) if close[i, j]])


def erdos_renyi(n: int, seed: int, p: float) -> Graph:
    """Each of the n (n - 1) / 2 edges present independently with probability p (seeded)."""
    if not 0 < p <= 1:
        raise TopologyError(f"comm.edge_probability = {p}: must be in (0, 1] (try 0.5).")
    draws = np.random.default_rng(seed).random((n, n))
    return Graph.from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n) if draws[i, j] < p])


def read_edges(path_name: str | None, n: int) -> Graph:
    """Edge list file: one 'i j' pair per line; blank lines and text after '#' are ignored."""
    if not path_name:
        raise TopologyError('needs comm.edges_file, a text file with one "i j" edge per line.')
    file = Path(path_name)
    if not file.is_file():
        raise TopologyError(f"comm.edges_file = {path_name!r} does not exist; give the path of the edge list.")
    edges = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path_name}, line {number}"
        if len(fields) != 2 or not all(f.lstrip("-").isdigit() for f in fields):
            raise TopologyError(f"{where}: expected two rank numbers 'i j', got {line.strip()!r}.")
        i, j = int(fields[0]), int(fields[1])
        for rank in (i, j):
            if not 0 <= rank < n:
                raise TopologyError(f"{where}: rank {rank} is outside 0..{n - 1} for {n} ranks; "
                                    f"remove the edge or run with more ranks.")
        if i == j:
            raise TopologyError(f"{where}: self loop ({i}, {j}); remove it (every rank keeps its own value anyway).")
        edges.append((i, j))
    return Graph.from_edges(n, edges)


def build_graph(name: str, n: int, *, seed: int = 0, edges_file: str | None = None,
                radius: float | None = None, p: float | None = None) -> Graph:
    """The named topology on n ranks, checked connected.

    `seed` draws random-geometric / erdos-renyi graphs (same seed, same graph on every rank);
    `radius` (default 0.5) and `p` (default 0.5) parametrise them; `edges_file` is read for "edges".
    Raises TopologyError, prefixed with the topology's name, for an unknown name, a rank count the
    topology cannot take, a bad edge list, or a disconnected result.
    """
    makers: dict[str, Callable[[], Graph]] = {
        "ring": lambda: ring(n),
        "path": lambda: path(n),
        "star": lambda: star(n),
        "grid": lambda: grid(n),
        "torus": lambda: grid(n, wrap=True),
        "complete": lambda: complete(n),
        "hypercube": lambda: hypercube(n),
        "exponential": lambda: exponential(n),
        "random-geometric": lambda: random_geometric(n, seed, DEFAULT_RADIUS if radius is None else radius),
        "erdos-renyi": lambda: erdos_renyi(n, seed, DEFAULT_EDGE_PROBABILITY if p is None else p),
        "edges": lambda: read_edges(edges_file, n),
    }
    if name not in makers:
        raise TopologyError(f'comm.topology = "{name}" is not a known graph; choose one of {", ".join(TOPOLOGIES)}.')
    if n < 1:
        raise TopologyError(f'comm.topology = "{name}": needs at least 1 rank, got {n}.')
    try:
        graph = makers[name]()
        validate_graph(graph)
    except TopologyError as err:
        raise TopologyError(f'comm.topology = "{name}": {err}{RANDOM_DRAW_HINTS.get(name, "")}') from None
    return graph
