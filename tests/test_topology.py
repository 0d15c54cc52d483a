"""Topologies, mixing weights and consensus schedules, checked against closed forms. Pure numpy, no MPI.

Consensus rounds are simulated here with the whole matrix: X <- a (W X) + b X + c X_prev, exactly
what every rank computes for its own row.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from odmar_mpi.comm.topology import TOPOLOGIES, Graph, TopologyError, build_graph
from odmar_mpi.comm.weights import (WEIGHT_SCHEMES, WeightsError, check_mixing_matrix, finite_time_schedule,
                                    mixing_matrix, predicted_rounds, round_coefficients, second_largest_modulus,
                                    spectrum)

ROUND_OFF = 1e-12  # float64 round-off after a few dozen rounds on unit-scale data


def simulate(W: np.ndarray, X: np.ndarray, coefficients: np.ndarray) -> list[np.ndarray]:
    """Iterates X_0..X_R of the consensus recurrence, all ranks at once (rows of X are ranks)."""
    iterates = [X]
    previous = X
    for a, b, c in coefficients:
        current = iterates[-1]
        iterates.append(a * (W @ current) + b * current + c * previous)
        previous = current
    return iterates


def relative_error(X: np.ndarray, mean: np.ndarray) -> float:
    """Largest over ranks of max |x_i - mean| / max |mean|."""
    return float(np.abs(X - mean).max() / np.abs(mean).max())


def ring_eigenvalues(n: int, self_weight: float) -> np.ndarray:
    """Closed form for a circulant ring: self_weight + (1 - self_weight) cos(2 pi k / n), k = 0..n-1."""
    return self_weight + (1 - self_weight) * np.cos(2 * np.pi * np.arange(n) / n)


# ---------------------------------------------------------------------------- topologies


@pytest.mark.parametrize("n", [3, 5, 8])
def test_ring_path_star_complete_match_their_closed_forms(n):
    ring, path, star, complete = (build_graph(name, n) for name in ("ring", "path", "star", "complete"))
    assert len(ring.edges()) == n and all(ring.degree(i) == 2 for i in range(n)) and ring.diameter() == n // 2
    assert path.edges() == tuple((i, i + 1) for i in range(n - 1)) and path.diameter() == n - 1
    assert star.degree(0) == n - 1 and all(star.degree(i) == 1 for i in range(1, n)) and star.diameter() == 2
    assert len(complete.edges()) == n * (n - 1) // 2 and complete.diameter() == 1


def test_two_rank_ring_is_one_edge_and_one_rank_has_none():
    assert build_graph("ring", 2).neighbours == ((1,), (0,))
    single = build_graph("ring", 1)
    assert single.neighbours == ((),) and single.diameter() == 0


@pytest.mark.parametrize("n, rows, cols", [(6, 2, 3), (12, 3, 4), (16, 4, 4)])
def test_grid_and_torus_have_the_lattice_edge_counts_and_diameters(n, rows, cols):
    grid, torus = build_graph("grid", n), build_graph("torus", n)
    assert len(grid.edges()) == rows * (cols - 1) + cols * (rows - 1)
    assert grid.diameter() == rows + cols - 2
    # Wrapping adds one edge per row and column, except a side of 2 where the wrap edge already exists.
    assert len(torus.edges()) == len(grid.edges()) + rows * (cols > 2) + cols * (rows > 2)
    assert torus.diameter() == rows // 2 + cols // 2


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_hypercube_neighbours_differ_in_one_bit(n):
    cube = build_graph("hypercube", n)
    bits = n.bit_length() - 1
    assert all(cube.neighbours[i] == tuple(sorted(i ^ (1 << b) for b in range(bits))) for i in range(n))
    assert cube.diameter() == bits


@pytest.mark.parametrize("n", [5, 8, 12])
def test_exponential_graph_links_powers_of_two_hops(n):
    graph = build_graph("exponential", n)
    hops = [1 << k for k in range(n.bit_length()) if (1 << k) < n]
    for i in range(n):
        assert set(graph.neighbours[i]) == {(i + h) % n for h in hops} | {(i - h) % n for h in hops}
    assert graph.diameter() <= math.ceil(math.log2(n))


def test_random_graphs_are_seeded_and_reach_their_limits():
    n = 12
    assert build_graph("erdos-renyi", n, seed=3, p=0.5) == build_graph("erdos-renyi", n, seed=3, p=0.5)
    assert build_graph("erdos-renyi", n, seed=3, p=0.5) != build_graph("erdos-renyi", n, seed=4, p=0.5)
    assert build_graph("random-geometric", n, seed=3) == build_graph("random-geometric", n, seed=3)
    # p = 1, or a radius covering the unit square's diagonal, gives every edge.
    assert build_graph("erdos-renyi", n, p=1.0) == build_graph("complete", n)
    assert build_graph("random-geometric", n, radius=1.5) == build_graph("complete", n)
    with pytest.raises(TopologyError, match=r'comm.topology = "random-geometric".*connected.*raise comm.radius'):
        build_graph("random-geometric", n, radius=0.01)


@pytest.mark.parametrize("name, n, problem", [
    ("hypercube", 6, "power-of-two rank count; got 6 .use 4 or 8 ranks"),
    ("grid", 7, "7 ranks cannot form a rows x cols grid"),
    ("torus", 2, "2 ranks cannot form a rows x cols grid"),
    ("mesh", 4, '"mesh" is not a known graph; choose one of ring, path'),
    ("ring", 0, "needs at least 1 rank"),
])
def test_sizes_a_topology_cannot_take_are_refused(name, n, problem):
    with pytest.raises(TopologyError, match=problem):
        build_graph(name, n)


def test_edge_list_file_is_read_with_comments_repeats_and_both_directions(tmp_path):
    edges = tmp_path / "edges.txt"
    edges.write_text("# a 4-cycle\n0 1\n1 2  # trailing comment\n\n2 3\n3 0\n1 0\n")
    assert build_graph("edges", 4, edges_file=str(edges)) == build_graph("ring", 4)


@pytest.mark.parametrize("text, problem", [
    ("0 1\n1 2\n2 7\n", r"line 3: rank 7 is outside 0..3 for 4 ranks"),
    ("0 1\n1 x\n", r"line 2: expected two rank numbers"),
    ("0 1\n1 1\n", r"line 2: self loop"),
    ("0 1\n1 2\n", r"rank 3 has no neighbours; the graph must be connected \(add an edge to rank 3\)"),
    ("0 1\n2 3\n", r"ranks 2, 3 cannot be reached from rank 0"),
])
def test_bad_edge_lists_are_refused_naming_the_problem(tmp_path, text, problem):
    edges = tmp_path / "edges.txt"
    edges.write_text(text)
    with pytest.raises(TopologyError, match=r'comm.topology = "edges": .*' + problem):
        build_graph("edges", 4, edges_file=str(edges))


def test_missing_edge_file_is_refused(tmp_path):
    with pytest.raises(TopologyError, match="does not exist"):
        build_graph("edges", 4, edges_file=str(tmp_path / "nowhere.txt"))


def test_graph_refuses_one_sided_or_unsorted_neighbour_lists():
    with pytest.raises(TopologyError, match="rank 0 lists 1 as a neighbour but rank 1 does not list 0"):
        Graph(3, ((1,), (2,), (1,)))
    with pytest.raises(TopologyError, match="sorted and distinct"):
        Graph(3, ((2, 1), (0,), (0,)))


def test_every_named_topology_is_built_connected_where_it_fits():
    for name in TOPOLOGIES:
        if name != "edges":
            graph = build_graph(name, 8, seed=1)
            assert graph.n == 8 and graph.is_connected()


# ---------------------------------------------------------------------------- weights


@pytest.mark.parametrize("scheme, name", [
    (scheme, name) for scheme in WEIGHT_SCHEMES for name in ("ring", "path", "star", "complete", "torus", "exponential")
    if scheme != "original" or name == "ring"  # the original weights exist on a cycle only (refusal tested below)
])
def test_weights_are_symmetric_doubly_stochastic_and_follow_the_edges(scheme, name):
    graph = build_graph(name, 8)
    W = mixing_matrix(graph, scheme)
    assert np.array_equal(W, W.T)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, rtol=0, atol=ROUND_OFF)
    assert np.array_equal(W != 0, graph.adjacency() | np.eye(8, dtype=bool))
    assert (W >= 0).all() and second_largest_modulus(W) < 1


def test_metropolis_and_max_degree_weights_match_their_formulas():
    n = 5
    star = mixing_matrix(build_graph("star", n), "metropolis")
    assert star[0, 1:].tolist() == [1 / n] * (n - 1)  # 1 / (1 + max(n - 1, 1))
    assert star[0, 0] == pytest.approx(1 / n, abs=ROUND_OFF) and star[1, 1] == pytest.approx(1 - 1 / n, abs=ROUND_OFF)
    path = mixing_matrix(build_graph("path", 4), "max-degree")
    assert path[0, 1] == path[1, 2] == 1 / 3
    assert path[0, 0] == pytest.approx(2 / 3, abs=ROUND_OFF) and path[1, 1] == pytest.approx(1 / 3, abs=ROUND_OFF)


@pytest.mark.parametrize("n", [5, 8, 12])
def test_original_cycle_weights_have_the_circulant_spectrum(n):
    W = mixing_matrix(build_graph("ring", n), "original")
    assert W[0, 0] == 0.5 and W[0, 1] == W[0, n - 1] == 0.25
    np.testing.assert_allclose(spectrum(W), np.sort(ring_eigenvalues(n, 0.5))[::-1], atol=ROUND_OFF)
    assert second_largest_modulus(W) == pytest.approx((1 + math.cos(2 * math.pi / n)) / 2, abs=ROUND_OFF)


def test_original_weights_are_refused_off_a_cycle():
    with pytest.raises(WeightsError, match=r'"original".*cycle only; rank 0 has 4 neighbours.*"metropolis"'):
        mixing_matrix(build_graph("star", 5), "original")


def test_invalid_weight_matrices_are_refused():
    ring = build_graph("ring", 4)
    good = mixing_matrix(ring)
    lopsided = good.copy()
    lopsided[0, 1] += 0.1
    lopsided[0, 0] -= 0.1
    with pytest.raises(WeightsError, match="not symmetric"):
        check_mixing_matrix(lopsided, ring)
    with pytest.raises(WeightsError, match="do not sum to 1"):
        check_mixing_matrix(good * 1.01, ring)
    off_graph = good.copy()
    off_graph[[0, 2], [2, 0]] = 0.1
    off_graph[[0, 2], [0, 2]] -= 0.1
    with pytest.raises(WeightsError, match=r"W\[0, 2\] = 0.1 but ranks 0 and 2 are not neighbours"):
        check_mixing_matrix(off_graph, ring)
    with pytest.raises(WeightsError, match="does not converge"):  # eigenvalue -1: values swap forever
        check_mixing_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]), build_graph("ring", 2))
    with pytest.raises(WeightsError, match=r"\(5, 5\) array"):
        check_mixing_matrix(good, build_graph("ring", 5))


# ---------------------------------------------------------------------------- schedules


def test_five_cycle_with_original_weights_is_exact_after_two_finite_time_rounds():
    W = mixing_matrix(build_graph("ring", 5), "original")
    schedule = finite_time_schedule(W)
    expected = {(1 + math.cos(2 * math.pi / 5)) / 2, (1 + math.cos(4 * math.pi / 5)) / 2}
    assert len(schedule) == 2 and np.allclose(sorted(schedule), sorted(expected), rtol=0, atol=ROUND_OFF)
    X = np.random.default_rng(0).random((5, 50))
    iterates = simulate(W, X, round_coefficients(W, "finite-time", 2))
    assert relative_error(iterates[2], X.mean(axis=0)) <= ROUND_OFF
    assert relative_error(iterates[1], X.mean(axis=0)) > 1e-3  # one round is not enough


@pytest.mark.parametrize("n", [8, 16, 64])
def test_finite_time_takes_one_round_per_distinct_nonunit_eigenvalue_and_is_exact(n):
    W = mixing_matrix(build_graph("ring", n))
    K = len(finite_time_schedule(W))
    assert K == n // 2  # cos(2 pi k / n) takes n // 2 distinct values besides k = 0
    X = np.random.default_rng(n).random((n, 20))
    final = simulate(W, X, round_coefficients(W, "finite-time", K))[-1]
    assert relative_error(final, X.mean(axis=0)) <= ROUND_OFF


def test_leja_order_is_what_keeps_finite_time_exact_on_a_large_ring():
    n = 64
    W = mixing_matrix(build_graph("ring", n), "original")
    X = np.random.default_rng(1).random((n, 20))
    ascending = np.sort(finite_time_schedule(W))
    iterates = [X]
    for value in ascending:
        iterates.append((W @ iterates[-1] - value * iterates[-1]) / (1 - value))
    leja_final = simulate(W, X, round_coefficients(W, "finite-time", len(ascending)))[-1]
    assert relative_error(leja_final, X.mean(axis=0)) <= ROUND_OFF
    assert relative_error(iterates[-1], X.mean(axis=0)) > 1e-6  # measured 4e-3 in ascending order when this was designed


def test_predicted_rounds_reproduce_the_design_figures():
    five = mixing_matrix(build_graph("ring", 5), "original")
    eight = mixing_matrix(build_graph("ring", 8), "original")
    sixty_four = mixing_matrix(build_graph("ring", 64), "original")
    lam = (1 + math.cos(2 * math.pi / 5)) / 2
    assert predicted_rounds(five, "plain", 1e-10) == math.ceil(math.log(1e-10) / math.log(lam)) == 55
    assert predicted_rounds(five, "plain", 1e-6) == 33
    assert predicted_rounds(five, "finite-time", 1e-10) == 2
    assert (predicted_rounds(eight, "plain", 1e-6), predicted_rounds(eight, "plain", 1e-10)) == (88, 146)
    assert predicted_rounds(eight, "finite-time", 1e-10) == 4
    assert predicted_rounds(eight, "chebyshev", 1e-10) <= 146 / 3
    assert predicted_rounds(sixty_four, "finite-time", 1e-10) == 32


@pytest.mark.parametrize("n", [5, 8])
def test_plain_rounds_shrink_the_slowest_mode_by_exactly_the_second_eigenvalue(n):
    W = mixing_matrix(build_graph("ring", n), "original")
    slowest = np.cos(2 * np.pi * np.arange(n) / n)[:, None]  # eigenvector of lambda_2
    k = predicted_rounds(W, "plain", 1e-10)
    iterates = simulate(W, slowest, round_coefficients(W, "plain", k))
    lam = second_largest_modulus(W)
    for rounds in (1, k // 2, k):
        np.testing.assert_allclose(iterates[rounds], lam**rounds * slowest, rtol=0, atol=ROUND_OFF)
    assert np.abs(iterates[k]).max() <= 1e-10 < np.abs(iterates[k - 1]).max()


@pytest.mark.parametrize("name, n", [("ring", 8), ("path", 6), ("star", 7)])
def test_chebyshev_follows_its_polynomial_on_every_eigenvector(name, n):
    W = mixing_matrix(build_graph(name, n))
    values, vectors = np.linalg.eigh(W)
    lo, hi = values[0], values[-2]
    mu = (2 - lo - hi) / (hi - lo)
    rounds = predicted_rounds(W, "chebyshev", 1e-10)
    iterates = simulate(W, vectors, round_coefficients(W, "chebyshev", rounds))
    for k in (1, 2, rounds // 2, rounds):
        # T_k(m(lambda)) / T_k(mu) with m(lambda) = (2 lambda - lo - hi) / (hi - lo), |m| <= 1 on the spectrum.
        m = np.clip((2 * values - lo - hi) / (hi - lo), -1, 1)
        expected = np.where(np.isclose(values, 1), 1.0, np.cos(k * np.arccos(m)) / np.cosh(k * np.arccosh(mu)))
        np.testing.assert_allclose(iterates[k], vectors * expected, rtol=0, atol=ROUND_OFF)
    assert np.abs(iterates[rounds][:, :-1]).max() <= 1e-10
    assert rounds <= predicted_rounds(W, "plain", 1e-10) / 2


def test_chebyshev_with_one_nonunit_eigenvalue_is_exact_in_one_round():
    W = mixing_matrix(build_graph("complete", 6))  # all 1/6: eigenvalues 1 and 0
    X = np.random.default_rng(2).random((6, 10))
    iterates = simulate(W, X, round_coefficients(W, "chebyshev", 3))
    assert all(relative_error(Xk, X.mean(axis=0)) <= ROUND_OFF for Xk in iterates[1:])


@pytest.mark.parametrize("algorithm, rounds", [("plain", 5), ("chebyshev", 40), ("finite-time", 4)])
def test_every_round_keeps_the_average(algorithm, rounds):
    W = mixing_matrix(build_graph("ring", 8), "original")
    coefficients = round_coefficients(W, algorithm, rounds)
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, rtol=0, atol=ROUND_OFF)
    X = np.random.default_rng(3).random((8, 10))
    for Xk in simulate(W, X, coefficients):
        np.testing.assert_allclose(Xk.mean(axis=0), X.mean(axis=0), rtol=0, atol=ROUND_OFF)


def test_finite_time_refuses_a_round_count_other_than_k():
    W = mixing_matrix(build_graph("ring", 8))
    with pytest.raises(ValueError, match="exactly K = 4 rounds; got 3"):
        round_coefficients(W, "finite-time", 3)
