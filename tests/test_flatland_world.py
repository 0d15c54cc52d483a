"""Flatland world (env/flatland.py, env/flatland_tree.py): PettingZoo API, determinism, masks, episode ends,
the shortest-path reference, bad input, and MAMBA's tree observation on a hand-checked rail."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from env.coupled import CoupledWorld, MissingWorldPackage, make_coupled_env
from env.flatland import MAMBA_EPISODE_LENGTH, SCENARIOS, make_flatland
from env.flatland_tree import ON_MAP, UNDEPARTED, DeadlockChecker, RailTables, Trains, TreeObservation, tree_size

needs_flatland = pytest.mark.skipif(importlib.util.find_spec("flatland") is None, reason="make flatland")
ROOT = Path(__file__).resolve().parents[1]


def tiny(episode_length: int = 0, **options: object):
    return make_flatland(3, episode_length, scenario="tiny", **options)


def random_allowed(infos: dict, agents: list[str], rng: np.random.Generator) -> dict[str, int]:
    return {agent: int(rng.choice(np.flatnonzero(infos[agent]["action_mask"]))) for agent in agents}


def episode_digest(env, seed: int, action_seed: int) -> str:
    """SHA-256 of a whole episode with random allowed actions: observations, masks, rewards and dones."""
    digest, rng = hashlib.sha256(), np.random.default_rng(action_seed)
    observations, infos = env.reset(seed=seed)
    while True:
        for agent in sorted(observations):
            digest.update(agent.encode() + observations[agent].tobytes() + infos[agent]["action_mask"].tobytes())
        if not env.agents:
            return digest.hexdigest()
        observations, rewards, terminations, truncations, infos = env.step(random_allowed(infos, env.agents, rng))
        for agent in sorted(rewards):
            digest.update(np.float64(rewards[agent]).tobytes() + bytes([terminations[agent], truncations[agent]]))


# -- 1. PettingZoo API -------------------------------------------------------------------------------


@needs_flatland
def test_parallel_api_test_passes_without_warnings() -> None:
    from pettingzoo.test import parallel_api_test

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(tiny(), num_cycles=1000)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "agent" in m.lower()], messages  # "Live agent was not given ..." etc.


@needs_flatland
def test_spaces_and_render() -> None:
    env = tiny(render_mode="rgb_array")
    assert env.possible_agents == ["train_0", "train_1", "train_2"]
    assert env.observation_space("train_1").shape == (205,) and env.observation_space("train_1").dtype == np.float32
    assert env.action_space("train_0").n == 3
    env.reset(seed=1)
    image = env.render()
    settings = SCENARIOS["tiny"]
    assert image.shape == (settings["height"] * 12, settings["width"] * 12, 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 3  # background, rail and train colours
    with pytest.warns(UserWarning, match="render_mode"):
        assert tiny().render() is None
    with pytest.raises(RuntimeError, match="before the episode ended"):
        env.episode_metrics()


# -- 2. Determinism ----------------------------------------------------------------------------------


@needs_flatland
def test_copies_with_the_same_seed_and_actions_are_bit_identical() -> None:
    a, b = tiny(), tiny()
    b.reset(seed=99)  # another history: reset(seed=s) must not depend on it
    rng = np.random.default_rng(0)
    malfunctions = 0
    for seed in (4, 5, 6):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        while True:
            assert obs_a.keys() == obs_b.keys() and info_a.keys() == info_b.keys()
            for agent in obs_a:
                assert obs_a[agent].tobytes() == obs_b[agent].tobytes()
                assert info_a[agent]["action_mask"].tobytes() == info_b[agent]["action_mask"].tobytes()
                malfunctions += obs_a[agent][4] < 0  # root feature "working" is -1 while broken down
            assert a.agents == b.agents
            if not a.agents:
                break
            actions = random_allowed(info_a, a.agents, rng)
            obs_a, rew_a, term_a, trunc_a, info_a = a.step(actions)
            obs_b, rew_b, term_b, trunc_b, info_b = b.step(actions)
            assert np.float64(list(rew_a.values())).tobytes() == np.float64(list(rew_b.values())).tobytes()
            assert (term_a, trunc_a) == (term_b, trunc_b) and rew_a.keys() == rew_b.keys()
        assert a.episode_metrics() == b.episode_metrics()
    assert malfunctions > 0  # the episodes did draw random malfunctions
    assert episode_digest(a, 4, 0) != episode_digest(a, 5, 0)  # the digest sees the seed


@needs_flatland
def test_an_episode_is_the_same_in_another_process_with_another_hash_seed() -> None:
    expected = episode_digest(tiny(), 7, 3)
    script = ("import sys; sys.path.insert(0, 'tests'); import test_flatland_world as t; "
              "print(t.episode_digest(t.tiny(), 7, 3))")
    environ = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


@needs_flatland
def test_coupled_world_copies_agree() -> None:
    copies = [CoupledWorld(make_coupled_env("flatland", 3, 20, scenario="tiny"), k, seed=5) for k in (0, 2)]
    rng = np.random.default_rng(1)
    for copy in copies:
        copy.reset()
    for _ in range(20):  # unmasked random actions: an unavailable one is executed as action 0
        if not copies[0].env.agents:
            break
        joint = rng.integers(0, 3, size=3)
        for copy in copies:
            copy.step(joint)
        assert copies[0].digest() == copies[1].digest()


# -- 3. Masks ----------------------------------------------------------------------------------------


@needs_flatland
def test_masks_follow_the_decision_cells_and_flatlands_transitions() -> None:
    env = make_flatland(5, 0, scenario="5_agents")
    rng = np.random.default_rng(2)
    checked_decisions = checked_moves = 0
    for seed in (0, 1):
        observations, infos = env.reset(seed=seed)
        rail = env._rail_env.rail
        while True:
            for agent, info in infos.items():
                mask = info["action_mask"]
                assert mask.dtype == np.int8 and mask.shape == (3,) and mask[0] == 1
            if not env.agents:
                break
            before = env._trains
            for agent in env.agents:
                h, mask = env._index[agent], infos[agent]["action_mask"]
                if before.where[h] != ON_MAP or before.malfunction[h] > 0:
                    continue
                (r, c), d = before.position[h], before.direction[h]
                exits = rail.get_transitions(((r, c), d))  # flatland's own transition map
                moves = [(d + turn) % 4 for turn in (-1, 0, 1) if exits[(d + turn) % 4]]
                if env._tables.decision[r][c][d]:
                    checked_decisions += 1
                    assert mask.tolist() == [1, int(len(moves) == 2), 1]
                else:
                    assert mask.tolist() == [1, 0, 0]  # one way to go: exactly one available action
                    assert len(moves) <= 1
            actions = random_allowed(infos, env.agents, rng)
            observations, rewards, terminations, truncations, infos = env.step(actions)
            after = env._trains
            for agent, action in actions.items():  # the move chosen is the move made; stop stays
                h = env._index[agent]
                if before.where[h] != ON_MAP or after.position[h] == before.position[h]:
                    continue  # not on the rail yet, or did not move (stopped, blocked or broken down)
                assert action != 2, agent
                if after.where[h] == ON_MAP:
                    moves = env._tables.moves(before.position[h], before.direction[h])
                    assert after.direction[h] == (moves[-1] if action == 1 else moves[0]), (agent, action, moves)
                    checked_moves += 1
    assert checked_decisions > 20 and checked_moves > 100


@needs_flatland
def test_undeparted_trains_choose_to_depart_or_wait() -> None:
    env = tiny()
    _, infos = env.reset(seed=2)
    assert all(info["action_mask"].tolist() == [1, 0, 1] for info in infos.values())  # depart or wait
    _, _, _, _, infos = env.step({agent: 2 for agent in env.agents})
    assert all(where == UNDEPARTED for where in env._trains.where)  # everyone waited
    env.step({"train_0": 0, "train_1": 2, "train_2": 2})
    assert env._trains.where[0] == ON_MAP and env._trains.where[1] == UNDEPARTED


# -- 4. Episode ends ---------------------------------------------------------------------------------


@needs_flatland
def test_arrival_terminates_that_train_and_the_step_limit_truncates_the_rest() -> None:
    env = tiny()
    for seed in range(30):  # an episode where some train arrives and another is still running at the limit
        observations, infos = env.reset(seed=seed)
        arrived, finished, total = set(), set(), {agent: 0.0 for agent in env.possible_agents}
        checked_arrival = False
        while env.agents:
            running = list(env.agents)
            observations, rewards, terminations, truncations, infos = env.step(env.reference_actions(observations))
            assert set(rewards) == set(running) and not finished & set(rewards)  # nobody comes back
            for agent in running:
                total[agent] += rewards[agent]
                if infos[agent]["arrived"]:
                    assert terminations[agent] and not truncations[agent] and agent not in env.agents
                    assert rewards[agent] == pytest.approx(10.0 + 0.01)  # +10 once, and the last cell's progress
                    arrived.add(agent)
                    checked_arrival |= bool(env.agents)  # the others go on
                if terminations[agent] or truncations[agent]:
                    finished.add(agent)
        truncated = {agent for agent in running if truncations[agent]}
        if checked_arrival and truncated:
            assert env._steps == env.max_episode_steps and not env.agents
            assert all(not terminations[agent] for agent in truncated)
            assert finished == set(env.possible_agents)
            assert env.episode_metrics() == {"arrival": len(arrived) / 3}
            assert all(total[agent] > 9.0 for agent in arrived)
            return
    pytest.fail("no tiny episode with an arrival and a truncation in seeds 0-29")


@needs_flatland
def test_deadlock_terminates_with_minus_five_once() -> None:
    env = tiny()
    for seed in range(30):
        observations, infos = env.reset(seed=seed)
        while env.agents:
            observations, rewards, terminations, truncations, infos = env.step(env.reference_actions(observations))
            dead = [agent for agent in rewards if infos[agent]["deadlocked"]]
            if dead:
                for agent in dead:
                    assert terminations[agent] and agent not in env.agents
                    assert -5.02 < rewards[agent] < -4.98  # -5 and at most one cell of progress
                return
    pytest.fail("no deadlock in tiny seeds 0-29")


@needs_flatland
def test_episode_length_sets_the_limit_and_zero_takes_flatlands() -> None:
    env = tiny(episode_length=5)
    env.reset(seed=3)
    for _ in range(5):
        observations, rewards, terminations, truncations, infos = env.step({agent: 0 for agent in env.agents})
    assert not env.agents and all(truncations.values()) and not any(terminations.values())
    assert env.episode_metrics() == {"arrival": 0.0}
    with pytest.raises(RuntimeError, match="call reset"):
        env.step({})
    env = tiny()
    env.reset(seed=3)
    assert env.max_episode_steps == env._rail_env._max_episode_steps > 5  # flatland 4.x's timetable limit
    assert MAMBA_EPISODE_LENGTH["5_agents"] == 573 and MAMBA_EPISODE_LENGTH["10_agents"] == 580


# -- 5. Reference policy -----------------------------------------------------------------------------


@needs_flatland
def test_shortest_path_reference_arrives_more_often_than_random() -> None:
    # Measured (flatland-rl 4.3.0, 5_agents, flatland's limit, seeds 0-9): reference 0.26, random 0.06.
    env = make_flatland(5, 0, scenario="5_agents")
    rng = np.random.default_rng(0)
    shares = {}
    for policy in ("reference", "random"):
        arrivals = []
        for seed in range(10):
            observations, infos = env.reset(seed=seed)
            while env.agents:
                if policy == "reference":
                    actions = env.reference_actions(observations)
                    assert all(infos[agent]["action_mask"][a] for agent, a in actions.items())
                else:
                    actions = random_allowed(infos, env.agents, rng)
                observations, _, _, _, infos = env.step(actions)
            arrivals.append(env.episode_metrics()["arrival"])
        shares[policy] = float(np.mean(arrivals))
    assert shares["reference"] >= shares["random"] + 0.1, shares


# -- 6. Bad input ------------------------------------------------------------------------------------


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="5_agents.*10_agents|10_agents.*5_agents"):
        make_flatland(5, 0, scenario="7_agents")


def test_wrong_agent_count_names_the_mpirun_n() -> None:
    with pytest.raises(ValueError, match=r"mpirun -n 10"):
        make_flatland(4, 0, scenario="10_agents")
    with pytest.raises(ValueError, match="n_trains"):
        make_flatland(5, 0, scenario="5_agents", n_trains=4)
    with pytest.raises(ValueError, match="allowed"):
        make_flatland(5, 0, scenario="5_agents", colour="red")
    with pytest.raises(ValueError, match="episode_length"):
        make_flatland(5, -1)


def test_missing_flatland_says_make_flatland(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "flatland" or m.startswith("flatland.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flatland", None)  # import flatland raises ImportError
    with pytest.raises(MissingWorldPackage, match="make flatland"):
        make_flatland(3, 0, scenario="tiny")


@needs_flatland
def test_step_rejects_bad_actions() -> None:
    env = tiny()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="have no action"):
        env.step({"train_0": 0})
    with pytest.raises(ValueError, match="must be in"):
        env.step({"train_0": 3, "train_1": 0, "train_2": 0})


# -- 7. MAMBA's tree observation ---------------------------------------------------------------------


def simple_rail_world(trains: Trains, targets: list[tuple[int, int]]):
    """flatland's make_simple_rail (7 x 10): a west-east line, a branch north at column 3 to a dead end
    at (0, 3) and a branch south at column 6 to a dead end at (6, 6); the line has dead ends at both ends."""
    from flatland.envs.agent_utils import EnvAgent
    from flatland.envs.grid.distance_map import DistanceMap
    from flatland.utils.simple_rail import make_simple_rail

    rail, _, _ = make_simple_rail()
    agents = [EnvAgent(initial_configuration=(trains.position[h], trains.direction[h]), handle=h,
                       targets={(targets[h], d) for d in range(4)}) for h in range(len(targets))]
    distance = DistanceMap(agents, rail.height, rail.width)
    distance.reset(agents, rail)
    tables = RailTables(rail.grid, rail.transitions.get_transitions, targets)
    tree = TreeObservation(3)
    tree.reset(tables, distance.get(), targets, np.array([0.25, 0.75]))
    deadlocks = DeadlockChecker(tables, len(targets))
    deadlocks.update(trains)
    return tree, deadlocks, distance.get()


@needs_flatland
def test_tree_observation_matches_mambas_layout_on_a_hand_checked_rail() -> None:
    # train 0 at (3, 1) facing east, target (6, 6); train 1 at (3, 8) facing west, target (0, 3).
    trains = Trains([ON_MAP, ON_MAP], [(3, 1), (3, 8)], [1, 3], [0, 0])
    tree, deadlocks, distance = simple_rail_world(trains, [(6, 6), (0, 3)])
    # By hand: east to the dead end (3, 9), back west to the switch at (3, 6), south to (6, 6): 14 cells.
    assert distance[0, 3, 1, 1] == 14 and distance[0, 3, 9, 1] == 6 and distance[0, 3, 6, 3] == 3
    assert distance[0, 3, 3, 3] == 18
    assert deadlocks.deadlocked == [False, False]
    obs = tree.observe(trains, deadlocks.deadlocked, [0])[0]
    assert obs.shape == (205,) == (tree_size(3),) and obs.dtype == np.float32

    def norm(d: float) -> float:
        return d / 100 - 10

    t, f = 1.0, -1.0
    # root: row/100, col/100, random id, deadlocked, working, norm(14), on a switch (always -1 in MAMBA),
    # next cell a decision (the edge ahead is 8 cells long), not departed
    root = [0.03, 0.01, 0.25, f, t, norm(14), f, f, f]
    # edge 0 (A): (3, 2) east to the dead end (3, 9): 8 cells, train 1 opposite at 7, ends 6 from the target
    a = [t, norm(7), norm(8), 0, norm(6) - norm(14), norm(14) - norm(14), f, f, t, f, t, f, f, f]
    # edge 2 (B, A's child): back west from (3, 8) to the facing switch (3, 6): 3 cells, train 1 (same way) at 1
    b = [t, norm(1), norm(3), 0, norm(3) - norm(6), norm(6) - norm(6), t, f, f, f, f, t, t, f]
    # edges 6 and 7 (B's children, south first): (4, 6) to the target (6, 6); (3, 5) west to the switch (3, 3)
    c1 = [t, 0, norm(3), 0, norm(0) - norm(3), norm(3) - norm(3), f, f, f, f, f, t, t, f]
    c2 = [t, 0, norm(3), 0, norm(18) - norm(3), norm(21) - norm(3), f, f, f, f, f, t, t, f]
    pad = [0.0] * 14
    expected = root + a + pad + b + pad + pad + pad + c1 + c2 + pad * 6
    np.testing.assert_allclose(obs, np.array(expected, dtype=np.float32), rtol=0, atol=1e-6)


@needs_flatland
def test_trains_face_to_face_are_deadlocked_and_seen_as_such() -> None:
    trains = Trains([ON_MAP, ON_MAP], [(3, 1), (3, 2)], [1, 3], [0, 5])
    tree, deadlocks, _ = simple_rail_world(trains, [(6, 6), (0, 3)])
    assert deadlocks.deadlocked == [True, True]
    obs = tree.observe(trains, deadlocks.deadlocked, [0, 1])
    assert obs[0][3] == 1.0 and obs[1][4] == -1.0  # deadlocked; train 1 is broken down
    edge = obs[0][9:23]  # the edge ahead holds the deadlocked train 1, and the tree stops there
    assert edge[13] == 1.0 and edge[8] == 1.0 and edge[1] == pytest.approx(1 / 100 - 10)
    assert not obs[0][23:].any()  # no further edges


@needs_flatland
def test_root_flags_near_decision_and_not_departed() -> None:
    # train 0 on the rail at (3, 4) facing west: the next cell (3, 3) is a facing switch; train 1 waits to
    # depart from (3, 8) facing west, two cells before the switch at (3, 6).
    trains = Trains([ON_MAP, UNDEPARTED], [(3, 4), (3, 8)], [3, 3], [0, 0])
    tree, deadlocks, distance = simple_rail_world(trains, [(6, 6), (0, 3)])
    obs = tree.observe(trains, deadlocks.deadlocked, [0, 1])
    assert obs[0][7:9].tolist() == [1.0, -1.0] and obs[1][7:9].tolist() == [-1.0, 1.0]
    assert obs[1][2] == 0.75 and obs[1][5] == pytest.approx(distance[1, 3, 8, 3] / 100 - 10)
    assert obs[0][9 + 2] == pytest.approx(1 / 100 - 10)  # the edge ahead is one cell long


@needs_flatland
def test_observations_are_finite_and_of_the_tree_size() -> None:
    env = tiny(tree_depth=2)
    assert env.observation_space("train_0").shape == (tree_size(2),) == (93,)
    rng = np.random.default_rng(4)
    observations, infos = env.reset(seed=8)
    while env.agents:
        assert all(o.shape == (93,) and np.isfinite(o).all() for o in observations.values())
        observations, _, _, _, infos = env.step(random_allowed(infos, env.agents, rng))
