"""Mixing weights W for a graph, their spectrum, and the per-round schedules consensus runs. Pure numpy.

Every W here is symmetric and doubly stochastic with W[i, j] = 0 unless i == j or (i, j) is an edge,
so x <- W x keeps the average and, on a connected graph, converges to it at the rate of W's
second-largest eigenvalue modulus.
"""

from __future__ import annotations

import math

import numpy as np

from odmar_mpi.comm.topology import Graph, validate_graph

WEIGHT_SCHEMES = ("metropolis", "original", "max-degree")
ALGORITHMS = ("plain", "chebyshev", "finite-time")
CHECK_TOL = 1e-12  # round-off allowed in symmetry and row sums of a checked W
EIGEN_TOL = 1e-9  # eigenvalues closer than this count as one (eigvalsh round-off is ~1e-15 for these sizes)


class WeightsError(ValueError):
    """A weight matrix that is not a valid mixing matrix for its graph."""


def mixing_matrix(graph: Graph, scheme: str = "metropolis") -> np.ndarray:
    """(n, n) float64 mixing matrix for `graph`, checked with `check_mixing_matrix`.

    metropolis: W[i, j] = 1 / (1 + max(deg i, deg j)) on edges (needs only neighbour degrees).
    original:   self 0.5, each neighbour 0.25 (the original code's cycle weights; a cycle only; on
                2 ranks the two 0.25 halves go to the one neighbour).
    max-degree: W[i, j] = 1 / (1 + max degree) on edges.
    The diagonal takes what the row leaves, so rows sum to 1.
    """
    validate_graph(graph)
    if scheme not in WEIGHT_SCHEMES:
        raise WeightsError(f'comm.weights = "{scheme}" is not a known scheme; choose one of {", ".join(WEIGHT_SCHEMES)}.')
    n = graph.n
    degrees = [graph.degree(i) for i in range(n)]
    W = np.zeros((n, n))
    if scheme == "original":
        bad = next((i for i in range(n) if degrees[i] != min(n - 1, 2)), None)
        if bad is not None:
            raise WeightsError(f'comm.weights = "original" (self 0.5, neighbours 0.25) is defined on a cycle only; '
                               f'rank {bad} has {degrees[bad]} neighbours here. Use comm.topology = "ring" or '
                               f'comm.weights = "metropolis".')
    for i, j in graph.edges():
        if scheme == "metropolis":
            W[i, j] = 1.0 / (1 + max(degrees[i], degrees[j]))
        elif scheme == "original":
            W[i, j] = 0.5 if n == 2 else 0.25
        else:
            W[i, j] = 1.0 / (1 + max(degrees))
        W[j, i] = W[i, j]
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    check_mixing_matrix(W, graph)
    return W


def check_mixing_matrix(W: np.ndarray, graph: Graph) -> None:
    """Refuse W unless it is (n, n), finite, symmetric, doubly stochastic, zero off the graph's edges,
    and converges (second-largest eigenvalue modulus < 1)."""
    n = graph.n
    if not isinstance(W, np.ndarray) or W.shape != (n, n):
        raise WeightsError(f"mixing matrix must be a ({n}, {n}) array for a graph of {n} ranks; "
                           f"got shape {getattr(W, 'shape', None)}.")
    if not np.isfinite(W).all():
        raise WeightsError("mixing matrix has NaN or infinite entries.")
    asymmetry = float(np.abs(W - W.T).max())
    if asymmetry > CHECK_TOL:
        raise WeightsError(f"mixing matrix is not symmetric (max |W - W^T| = {asymmetry:.1e}); "
                           "use a symmetric scheme such as metropolis.")
    row_error = float(np.abs(W.sum(axis=1) - 1.0).max())
    if row_error > CHECK_TOL:
        raise WeightsError(f"mixing matrix rows do not sum to 1 (max error {row_error:.1e}); set each diagonal "
                           "entry to 1 minus the row's off-diagonal sum.")
    outside = (W != 0) & ~graph.adjacency() & ~np.eye(n, dtype=bool)
    if outside.any():
        i, j = (int(k) for k in np.argwhere(outside)[0])
        raise WeightsError(f"mixing matrix has W[{i}, {j}] = {W[i, j]:g} but ranks {i} and {j} are not neighbours; "
                           "weights must follow the graph's edges.")
    slem = second_largest_modulus(W)
    if slem >= 1.0 - CHECK_TOL:
        raise WeightsError(f"mixing matrix does not converge: second-largest eigenvalue modulus {slem:.12f} >= 1 "
                           "(an eigenvalue -1 alternates forever); give every rank a positive self weight.")


def spectrum(W: np.ndarray) -> np.ndarray:
    """Eigenvalues of symmetric W, largest first (1 comes first for a mixing matrix)."""
    return np.linalg.eigvalsh(W)[::-1]


def second_largest_modulus(W: np.ndarray) -> float:
    """max |lambda| over the eigenvalues other than the (single) eigenvalue 1; 0 for one rank."""
    values = spectrum(W)
    return float(np.abs(values[1:]).max()) if len(values) > 1 else 0.0


def nonunit_eigenvalues(W: np.ndarray, tol: float = EIGEN_TOL) -> np.ndarray:
    """W's distinct eigenvalues other than 1, ascending; eigenvalues within `tol` merge into their mean."""
    values = np.sort(spectrum(W)[1:])
    clusters: list[list[float]] = []
    for value in values:
        if clusters and value - clusters[-1][-1] <= tol:
            clusters[-1].append(float(value))
        else:
            clusters.append([float(value)])
    return np.array([np.mean(c) for c in clusters])


def leja_order(points: np.ndarray) -> np.ndarray:
    """Points in Leja order: largest modulus first, then each maximises the product of distances to those before.

    The finite-time rounds multiply the error by (lambda - l_k) / (1 - l_k); taken in ascending order
    these factors compound to 4e-3 error on a 64-ring (1e+14 on a 128-ring), in Leja order to ~1e-14.
    """
    remaining = list(points)
    ordered: list[float] = []
    while remaining:
        if ordered:
            scores = [np.log(np.abs(p - np.array(ordered))).sum() for p in remaining]
        else:
            scores = [abs(p) for p in remaining]
        ordered.append(remaining.pop(int(np.argmax(scores))))
    return np.array(ordered)


def finite_time_schedule(W: np.ndarray, tol: float = EIGEN_TOL) -> np.ndarray:
    """The K distinct non-unit eigenvalues l_k of W in Leja order: x <- (W x - l_k x) / (1 - l_k) for k = 1..K
    gives the exact average (the product of the factors vanishes on every non-unit eigenvector)."""
    return leja_order(nonunit_eigenvalues(W, tol))


def chebyshev_interval(W: np.ndarray) -> tuple[float, float]:
    """(smallest, largest) eigenvalue of W other than 1: the interval the Chebyshev polynomial is tuned for."""
    values = spectrum(W)
    return float(values[-1]), float(values[1])


def round_coefficients(W: np.ndarray, algorithm: str, rounds: int) -> np.ndarray:
    """(rounds, 3) coefficients (a, b, c): round k computes x_new = a (W x) + b x + c x_prev.

    plain: (1, 0, 0). finite-time: a = 1 / (1 - l_k), b = -l_k / (1 - l_k) for the Leja-ordered
    schedule (rounds must equal its length K). chebyshev: the three-term recurrence of
    T_k(m(lambda)) / T_k(m(1)), m mapping W's non-unit interval [lo, hi] onto [-1, 1]; the same for
    any number of rounds, so it can stop at any round. With a single non-unit eigenvalue (e.g. a
    complete graph) Chebyshev's polynomial is the finite-time factor, repeated.
    Each row's a + b + c = 1 up to round-off, so the average is kept.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f'comm.algorithm = "{algorithm}" is not known; choose one of {", ".join(ALGORITHMS)}.')
    coefficients = np.zeros((rounds, 3))
    if algorithm == "plain":
        coefficients[:, 0] = 1.0
        return coefficients
    if algorithm == "finite-time":
        schedule = finite_time_schedule(W)
        if rounds != len(schedule):
            raise ValueError(f"finite-time consensus on this W takes exactly K = {len(schedule)} rounds; got {rounds}.")
        coefficients[:, 0] = 1.0 / (1.0 - schedule)
        coefficients[:, 1] = -schedule / (1.0 - schedule)
        return coefficients
    lo, hi = chebyshev_interval(W) if W.shape[0] > 1 else (0.0, 0.0)
    if hi - lo <= EIGEN_TOL:
        coefficients[:, 0] = 1.0 / (1.0 - lo)
        coefficients[:, 1] = -lo / (1.0 - lo)
        return coefficients
    # m(lambda) = alpha lambda - beta maps [lo, hi] to [-1, 1]; mu = m(1) > 1.
    alpha, beta = 2.0 / (hi - lo), (hi + lo) / (hi - lo)
    mu = alpha - beta
    # ratio = T_{k-1}(mu) / T_k(mu), kept as a ratio because T_k(mu) overflows for long runs.
    ratio = 1.0 / mu
    for k in range(rounds):
        if k == 0:  # x_1 = m(W) x_0 / mu
            coefficients[k] = (alpha / mu, -beta / mu, 0.0)
            continue
        next_ratio = 1.0 / (2.0 * mu - ratio)
        coefficients[k] = (2.0 * next_ratio * alpha, -2.0 * next_ratio * beta, -next_ratio * ratio)
        ratio = next_ratio
    return coefficients


def predicted_rounds(W: np.ndarray, algorithm: str, rel_tol: float) -> int:
    """Rounds after which the spectral bound on the error (relative to the initial disagreement) is <= rel_tol.

    plain: ceil(log(rel_tol) / log(slem)); chebyshev: ceil(acosh(1 / rel_tol) / acosh(mu)) with
    mu = (2 - lo - hi) / (hi - lo); finite-time: K. One rank needs 0 rounds.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f'comm.algorithm = "{algorithm}" is not known; choose one of {", ".join(ALGORITHMS)}.')
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol = {rel_tol}: must be in (0, 1).")
    if W.shape[0] == 1:
        return 0
    if algorithm == "finite-time":
        return len(finite_time_schedule(W))
    if algorithm == "plain":
        slem = second_largest_modulus(W)
        return 1 if slem <= EIGEN_TOL else math.ceil(math.log(rel_tol) / math.log(slem))
    lo, hi = chebyshev_interval(W)
    if hi - lo <= EIGEN_TOL:
        return 1
    mu = (2.0 - lo - hi) / (hi - lo)
    return math.ceil(math.acosh(1.0 / rel_tol) / math.acosh(mu))
