"""MAMBA's Flatland observation, decision cells and deadlock check, ported to flatland-rl 4.x (env/flatland.py).

MAMBA (jbr-ai-labs/mamba, env/flatland/) trains on Flatland 2.2.2 with its own tree observation
(`SimpleObservation` over its copy of `TreeObsForRailEnv`, depth 3), its `GreedyChecker` (which cells need
a decision) and its `DeadlockChecker`. This module is the same logic on plain Python and numpy tables, so it
reads flatland only through a snapshot of the trains (`Trains`) and the rail's grid; what it promises:

  * `tree_size(depth)` floats per train: 9 root features, then 14 per edge of a binary tree of `depth`
    levels (depth 3: 2 + 4 + 8 edges, 9 + 14 * 14 = 205 floats, MAMBA's FLATLAND_OBS_SIZE), in MAMBA's order:
      root: row / 100, column / 100, the train's random id (uniform in [0, 1), drawn per episode),
            deadlocked, working (no malfunction), norm(distance to target), on a switch, next cell is a
            decision, not yet departed;
      edge: real (before or at the target: 1, after it: -1), norm(distance to the first train seen on it),
            norm(length to the next branch), norm(distance to an unusable switch), change of norm(distance
            to target) from the parent, the same at the next branch, >= 1 and >= 2 trains in the same
            direction, >= 1 and >= 2 in the opposite direction, an opposite train with a higher handle, the
            first train seen goes the same way, the highest-handle train seen goes the same way, a
            deadlocked train on the edge.
    Booleans are +1 / -1, norm(d) = d / 100 - 10 (0 for an infinite distance), a missing edge is 14 zeros.
    The edges are listed breadth first; a node's children from left to right (left, forward, right, back
    relative to the direction of travel), at most two.
  * Kept as MAMBA computes them (so the layout and values match MAMBA's): "on a switch" is always -1 and
    "distance to an unusable switch" always 0 (MAMBA tests a (row, col, direction) triple against a set of
    cells, and checks unusable switches only where a line ends at a facing switch); a line of track ends at
    any train's target, at a facing switch or a dead end, and runs through trailing switches and crossings.
  * Decision cells (MAMBA's GreedyChecker): switches (cells with more than two transition bits, crossings
    included), every train's target cell, and every (cell, direction) whose next cell is one of those.
    Elsewhere the train has only one way to go and MAMBA moves it without asking the policy.
  * Deadlocks (MAMBA's DeadlockChecker): a train on the map is deadlocked when every cell it can move to is
    held by a deadlocked train or by a train that is itself blocked in a cycle of such dependencies (two
    trains face to face on one track); once deadlocked, always deadlocked in the episode.

Everything here is a function of its inputs (no randomness, no set iteration over strings), so all copies of
a coupled world compute bit-identical observations.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, NamedTuple, Sequence

import numpy as np

# Flatland's Grid4 directions: 0 north, 1 east, 2 south, 3 west.
MOVEMENT = ((-1, 0), (0, 1), (1, 0), (0, -1))
DIAMOND_CROSSING = int("1000010000100001", 2)  # MAMBA's Graph treats it as a plain rail (two transitions)
N_ROOT_FEATURES = 9
N_EDGE_FEATURES = 14
UNDEPARTED, ON_MAP, ARRIVED = 0, 1, 2  # where a train is (Trains.where)
INF = math.inf
_PADDING = (0.0,) * N_EDGE_FEATURES


def tree_size(max_depth: int) -> int:
    """Floats in one train's observation: (2^(depth+1) - 2) edges of 14 features plus 9 root features."""
    return (2 ** (max_depth + 1) - 2) * N_EDGE_FEATURES + N_ROOT_FEATURES


def norm_dist(dist: float) -> float:
    """MAMBA's distance normalisation: d / 100 - 10, and 0 for infinity (below zero for every finite d < 1000)."""
    return 0.0 if dist == INF else dist / 100.0 - 10.0


def norm_bool(value: bool) -> float:
    return 1.0 if value else -1.0


class Trains(NamedTuple):
    """Where every train is, indexed by handle (what MAMBA reads from flatland's agents)."""

    where: Sequence[int]  # UNDEPARTED, ON_MAP or ARRIVED
    position: Sequence[tuple[int, int]]  # the cell: its start cell before departure, its target after arrival
    direction: Sequence[int]  # the direction it faces (its initial direction before departure)
    malfunction: Sequence[int]  # steps of malfunction left; 0 = working


class RailTables:
    """What MAMBA precomputes per rail at reset (its Graph and GreedyChecker), as Python lists for fast lookups.

    `grid` is flatland's (height, width) array of 16-bit cell codes; `cell_transitions(code, direction)` gives
    the 4 exits (north, east, south, west) of a train facing `direction` in a cell of that code (flatland's
    `rail.transitions.get_transitions`); `targets` are the trains' target cells."""

    def __init__(self, grid: np.ndarray, cell_transitions: Callable[[int, int], Sequence[int]],
                 targets: Sequence[tuple[int, int]]) -> None:
        grid = np.asarray(grid)
        self.height, self.width = (int(n) for n in grid.shape)
        exits_of = {int(code): tuple(tuple(bool(t) for t in cell_transitions(int(code), d)) for d in range(4))
                    for code in np.unique(grid)}
        codes = [[int(code) for code in row] for row in grid]
        # exits[r][c][d]: the 4 exit flags of a train facing d in cell (r, c)
        self.exits = [[exits_of[code] for code in row] for row in codes]
        bits = [[bin(code).count("1") for code in row] for row in codes]
        self.target_cells = {(int(r), int(c)) for r, c in targets}
        switches = {(r, c) for r in range(self.height) for c in range(self.width) if bits[r][c] > 2}
        # one_way[r][c][d]: the only exit of a one-exit cell that is not a dead end, else -1 (MAMBA's Graph)
        self.one_way = [[[-1] * 4 for _ in range(self.width)] for _ in range(self.height)]
        self.total = [[2 if codes[r][c] == DIAMOND_CROSSING else bits[r][c] for c in range(self.width)]
                      for r in range(self.height)]
        decision = np.zeros((self.height, self.width, 4), dtype=bool)
        stops = switches | self.target_cells
        for r in range(self.height):
            for c in range(self.width):
                for d in range(4):
                    exits = self.exits[r][c][d]
                    if sum(exits) == 1 and self.total[r][c] != 1:
                        self.one_way[r][c][d] = exits.index(True)
                    for nd in range(4):
                        if exits[nd] and (r + MOVEMENT[nd][0], c + MOVEMENT[nd][1]) in stops:
                            decision[r, c, d] = True
        for r, c in stops:
            decision[r, c, :] = True
        self.decision = decision.tolist()
        self._lines: dict[tuple[int, int, int], tuple[tuple[tuple[int, int, int], ...], int, float]] = {}

    def moves(self, position: tuple[int, int], direction: int) -> list[int]:
        """The directions a train facing `direction` in `position` can leave to, leftmost first (MAMBA's
        left / forward / right scan); a dead end's only move is back (flatland turns the train around)."""
        exits = self.exits[position[0]][position[1]][direction]
        moves = [(direction + turn) % 4 for turn in (-1, 0, 1) if exits[(direction + turn) % 4]]
        return moves or [(direction + 2) % 4]

    def line(self, start: tuple[int, int, int]) -> tuple[tuple[tuple[int, int, int], ...], int, float]:
        """The track from `start` (row, col, direction of travel) to the next node, MAMBA's `_explore_line`
        without the trains: the cells passed with the direction in each, and the distance to an unusable
        switch (as MAMBA computes it). Static per rail, so cached for the episode."""
        cached = self._lines.get(start)
        if cached is not None:
            return cached
        r, c, d = start
        cells = []
        unusable = INF
        for _ in range(4 * self.height * self.width):  # a switchless loop would never end
            cells.append((r, c, d))
            if (r, c) in self.target_cells:
                break
            only = self.one_way[r][c][d]
            if only != -1:
                r, c, d = r + MOVEMENT[only][0], c + MOVEMENT[only][1], only
                continue
            n_exits = sum(self.exits[r][c][d])
            if self.total[r][c] > 2 > n_exits:
                unusable = float(len(cells))
            break  # facing switch, dead end (or a cell without exits)
        result = (tuple(cells), len(cells), unusable)
        self._lines[start] = result
        return result


class DeadlockChecker:
    """MAMBA's DeadlockChecker: `update(trains)` after every step marks the trains that can never move again."""

    def __init__(self, tables: RailTables, n_trains: int) -> None:
        self.tables = tables
        self.deadlocked = [False] * n_trains

    def update(self, trains: Trains) -> None:
        n = len(self.deadlocked)
        self._at = {trains.position[h]: h for h in range(n) if trains.where[h] == ON_MAP}
        self._dep: list[list[int]] = [[] for _ in range(n)]
        self._checked = [0] * n  # 0 unseen, 1 in progress (waits on others), 2 settled
        self._trains = trains
        for h in range(n):
            if trains.where[h] == ON_MAP and not self.deadlocked[h] and not self._checked[h]:
                self._check_blocked(h)
        self._fix_deps()

    def _check_blocked(self, handle: int) -> None:
        (r, c), d = self._trains.position[handle], self._trains.direction[handle]
        exits = self.tables.exits[r][c][d]
        self._checked[handle] = 1
        for nd in range(4):
            if not exits[nd]:
                continue
            other = self._at.get((r + MOVEMENT[nd][0], c + MOVEMENT[nd][1]), -1)
            if other == -1:  # the way is free
                self._checked[handle] = 2
                return
            if self.deadlocked[other]:
                continue  # blocked for good
            if self._checked[other] == 0:
                self._check_blocked(other)
            if self._checked[other] == 2 and not self.deadlocked[other]:
                self._checked[handle] = 2  # the way may become free
                return
            self._dep[handle].append(other)  # blocked unless `other` moves: settled in _fix_deps
        if not self._dep[handle]:
            self._checked[handle] = 2
            if any(exits):  # a cell without exits is not a deadlock
                self.deadlocked[handle] = True

    def _fix_deps(self) -> None:
        changed = True
        while changed:
            changed = False
            for h in range(len(self.deadlocked)):
                if self._checked[h] != 1:
                    continue
                blocked = 0
                for other in self._dep[h]:
                    if self._checked[other] == 2:
                        if self.deadlocked[other]:
                            blocked += 1
                        else:
                            self._checked[h] = 2
                            changed = True
                if blocked == len(self._dep[h]):
                    self._checked[h] = 2
                    self.deadlocked[h] = True
                    changed = True
        for h in range(len(self.deadlocked)):
            if self._checked[h] == 1:  # a cycle of trains waiting on each other
                self.deadlocked[h] = True
                self._checked[h] = 2


class _Node(NamedTuple):
    other_agent: float  # distance to the first train on the edge (inf: none)
    unusable_switch: float
    next_branch: int  # length of the edge
    dist_to_target: float  # from the end of the edge; 0 if it ends at the own target, -1 after it
    same: int
    opposite: int
    max_opposite: int
    max_not_opposite: bool
    deadlocked: bool
    first_not_opposite: bool
    children: tuple["_Node", ...]


class TreeObservation:
    """MAMBA's SimpleObservation (tree of `max_depth` levels, 205 floats at depth 3) for every train."""

    def __init__(self, max_depth: int = 3) -> None:
        if max_depth < 1:
            raise ValueError(f"tree depth = {max_depth}: must be >= 1")
        self.max_depth = int(max_depth)
        self.size = tree_size(self.max_depth)

    def reset(self, tables: RailTables, distance: np.ndarray, targets: Sequence[tuple[int, int]],
              random_ids: np.ndarray) -> None:
        """A new episode: the rail's tables, flatland's distance map (trains, height, width, 4), every train's
        target cell and its random id (MAMBA draws one per train and episode)."""
        self.tables = tables
        self.distance = np.asarray(distance, dtype=np.float64)
        self.targets = [(int(r), int(c)) for r, c in targets]
        self.random_ids = [float(x) for x in random_ids]

    def observe(self, trains: Trains, deadlocked: Sequence[bool], handles: Sequence[int]) -> dict[int, np.ndarray]:
        """The observations (float32, `size`) of `handles` in the state `trains`, after `DeadlockChecker.update`."""
        self._trains = trains
        self._deadlocked = deadlocked
        self._at = {trains.position[h]: h for h in range(len(trains.where)) if trains.where[h] == ON_MAP}
        self._edges: dict[tuple[int, int, int], tuple] = {}  # per state, shared by all trains (as MAMBA's cache)
        return {h: np.asarray(self._observe(h), dtype=np.float32) for h in handles}

    def _observe(self, handle: int) -> list[float]:
        trains = self._trains
        where, (r, c), d = trains.where[handle], trains.position[handle], trains.direction[handle]
        root = None
        if where != ARRIVED:  # an arrived train sees no tree (MAMBA: DONE_REMOVED)
            children = tuple(self._branch(handle, (r + MOVEMENT[nd][0], c + MOVEMENT[nd][1], nd), 1, False)
                             for nd in self._exits_in_order(r, c, d, root=True))
            root = _Node(0, 0, 0, float(self.distance[handle, r, c, d]), 0, 0, 0, False, False, False, children)
        features = [r / 100.0, c / 100.0, self.random_ids[handle], norm_bool(self._deadlocked[handle]),
                    norm_bool(trains.malfunction[handle] == 0), norm_dist(root.dist_to_target if root else INF),
                    -1.0,  # "on a switch": always false in MAMBA (see the module docstring)
                    norm_bool(_near_next_decision(root)), norm_bool(where == UNDEPARTED)]
        queue: deque[tuple[_Node | None, int]] = deque([(root, self.max_depth)])
        while queue:
            node, level = queue.popleft()
            children = node.children if node is not None else ()
            if len(children) > 2:
                raise AssertionError(f"a node with {len(children)} branches: flatland cells have at most 2")
            for child in children:
                features.extend(_edge_features(child, node, handle))
                if level > 1:
                    queue.append((child, level - 1))
            for _ in range(len(children), 2):
                features.extend(_PADDING)
                if level > 1:
                    queue.append((None, level - 1))
        return features

    def _exits_in_order(self, r: int, c: int, d: int, root: bool = False) -> list[int]:
        exits = self.tables.exits[r][c][d]
        if root and sum(exits) == 1:  # MAMBA orients the root along its only exit (same order either way)
            d = exits.index(True)
        return [(d + turn) % 4 for turn in (-1, 0, 1, 2) if exits[(d + turn) % 4]]

    def _branch(self, handle: int, start: tuple[int, int, int], depth: int, was_target: bool) -> _Node:
        cells, length, unusable = self.tables.line(start)
        edge = self._edges.get(start)
        if edge is None:
            edge = self._edges[start] = self._trains_on(cells)
        other, same, opposite, max_opposite, max_not_opposite, deadlocked, first_not_opposite = edge
        er, ec, ed = cells[-1]
        last_is_target = (er, ec) == self.targets[handle]
        if was_target:
            dist = -1.0
        elif last_is_target:
            dist = 0.0
        else:
            dist = float(self.distance[handle, er, ec, ed])
        children: tuple[_Node, ...] = ()
        if depth < self.max_depth and not deadlocked:  # MAMBA stops at a deadlocked train
            children = tuple(self._branch(handle, (er + MOVEMENT[nd][0], ec + MOVEMENT[nd][1], nd), depth + 1,
                                          last_is_target or was_target)
                             for nd in self._exits_in_order(er, ec, ed))
        return _Node(other, unusable, length, dist, same, opposite, max_opposite, max_not_opposite, deadlocked,
                     first_not_opposite, children)

    def _trains_on(self, cells: Sequence[tuple[int, int, int]]) -> tuple:
        """MAMBA's `_explore_line` counts of the trains on an edge (the same for every observer)."""
        other, same, opposite, max_opposite, deadlocked = INF, 0, 0, 0, False
        first, first_not_opposite, max_handle, max_not_opposite = -1, True, -1, True
        directions = self._trains.direction
        for k, (r, c, d) in enumerate(cells):
            h = self._at.get((r, c))
            if h is None:
                continue
            other = min(other, float(k + 1))
            if self._deadlocked[h]:
                deadlocked = True
            elif first == -1:
                first, first_not_opposite = h, directions[h] == d
            if directions[h] == d:
                same += 1
                if h > max_handle:
                    max_handle, max_not_opposite = h, True
            else:
                opposite += 1
                max_opposite = max(max_opposite, h)
                if h > max_handle:
                    max_handle, max_not_opposite = h, False
        return other, same, opposite, max_opposite, max_not_opposite, deadlocked, first_not_opposite


def _edge_features(node: _Node, parent: _Node, handle: int) -> tuple[float, ...]:
    parent_dist = norm_dist(parent.dist_to_target)
    return (1.0 if node.dist_to_target >= 0 else -1.0,
            norm_dist(node.other_agent),
            norm_dist(node.next_branch),
            norm_dist(node.unusable_switch),
            norm_dist(node.dist_to_target) - parent_dist,
            norm_dist(node.dist_to_target + node.next_branch) - parent_dist,
            norm_bool(node.same >= 1), norm_bool(node.same >= 2),
            norm_bool(node.opposite >= 1), norm_bool(node.opposite >= 2),
            norm_bool(node.max_opposite > handle),
            norm_bool(node.first_not_opposite),
            norm_bool(node.max_not_opposite),
            norm_bool(node.deadlocked))


def _near_next_decision(root: _Node | None) -> bool:
    """MAMBA: the train has one way to go and the next node is one cell ahead."""
    if root is None or len(root.children) != 1:
        return False
    child = root.children[0]
    return child.next_branch == 1 or child.unusable_switch == 1
