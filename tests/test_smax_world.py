"""SMAX as a coupled world (env/smax.py): PettingZoo API, bit-identical copies (also in a fresh process),
masks, episode ends and the win flag, the reference policy, bad input, seeding."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="pip install -e '.[smax]'")

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(3)  # episodes compared between copies
TRUNCATE_AT = 8  # 2m's time limit here: marines standing still are not yet in range (enemies come ~1.6 a step)


@pytest.fixture(scope="module")
def env3m() -> Iterator[Any]:
    """3m with SMAC's time limit (episode_length = 0 -> 60), compiled once for the module."""
    from env.smax import make_smax

    env = make_smax(3, 0, scenario="3m", render_mode="rgb_array")
    yield env
    env.close()


@pytest.fixture(scope="module")
def env2m() -> Iterator[Any]:
    """Two marines against two, truncated after TRUNCATE_AT steps."""
    from env.smax import make_smax

    env = make_smax(2, TRUNCATE_AT, scenario="2m")
    yield env
    env.close()


def random_allowed(infos: dict[str, dict], agents: list[str], rng: np.random.Generator) -> dict[str, int]:
    return {agent: int(rng.choice(np.flatnonzero(infos[agent]["action_mask"]))) for agent in agents}


def play(env: Any, seed: int, policy: str = "random") -> Iterator[tuple]:
    """Yield (actions, step results) of one episode of `policy` ("random" allowed actions or "reference")."""
    rng = np.random.default_rng(seed)
    observations, infos = env.reset(seed=seed)
    yield None, (observations, infos)
    while env.agents:
        if policy == "random":
            actions = random_allowed(infos, env.agents, rng)
        else:
            actions = env.reference_actions(observations)
        results = env.step(actions)
        observations, infos = results[0], results[4]
        yield actions, results


def record_bytes(env: Any, results: tuple) -> bytes:
    """Everything a step hands back, as bytes in possible_agents order (plus the reference actions)."""
    chunks = []
    for agent in env.possible_agents:
        for part in results:
            if agent in part:
                value = part[agent]
                if isinstance(value, dict):
                    value = value["action_mask"]
                chunks.append(agent.encode() + np.asarray(value).tobytes())
    chunks.append(repr(sorted(env.reference_actions().items())).encode())
    return b"".join(chunks)


def episodes_digest(env: Any, seeds: Any) -> str:
    """SHA-256 of every step of random-allowed-action episodes with `seeds`, and their win flags."""
    hasher = hashlib.sha256()
    for seed in seeds:
        for _, results in play(env, seed):
            hasher.update(record_bytes(env, results))
        hasher.update(repr(env.episode_metrics()).encode())
    return hasher.hexdigest()


def test_pettingzoo_parallel_api(env3m: Any, env2m: Any) -> None:
    from pettingzoo.test import parallel_api_test

    for env in (env3m, env2m):
        parallel_api_test(env, num_cycles=200)
        observations, infos = env.reset(seed=0)
        assert all(env.observation_space(a).contains(o) for a, o in observations.items())
    assert env3m.possible_agents == ["ally_0", "ally_1", "ally_2"] and env2m.possible_agents == ["ally_0", "ally_1"]
    assert env3m.observation_space("ally_0").shape == (75,) and env3m.action_space("ally_0").n == 8
    assert env3m.episode_length == 60  # SMAC's limit for 3m


def test_two_copies_and_a_fresh_process_are_bit_identical(env3m: Any) -> None:
    from env.smax import make_smax

    other = make_smax(3, 0, scenario="3m")
    hasher = hashlib.sha256()
    deaths = 0
    for seed in SEEDS:
        for (_, mine), (_, theirs) in zip(play(env3m, seed), play(other, seed), strict=True):
            assert record_bytes(env3m, mine) == record_bytes(other, theirs)
            hasher.update(record_bytes(env3m, mine))
            if len(mine) == 5:
                deaths += sum(mine[2].values())
        assert env3m.episode_metrics() == other.episode_metrics()
        hasher.update(repr(env3m.episode_metrics()).encode())
    assert deaths > 0  # the episodes went through units dying
    script = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
              "import test_smax_world as t; from env.smax import make_smax; "
              "print(t.episodes_digest(make_smax(3, 0, scenario='3m'), t.SEEDS))")
    fresh = subprocess.run([sys.executable, "-c", script, str(ROOT / "tests"), str(ROOT)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"}, cwd=ROOT)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.strip().splitlines()[-1] == hasher.hexdigest() == episodes_digest(other, SEEDS)


def test_copies_in_coupled_world_agree(env3m: Any) -> None:
    from env.coupled import CoupledWorld
    from env.smax import make_smax

    copies = [CoupledWorld(env3m, 0, seed=5), CoupledWorld(make_smax(3, 0, scenario="3m"), 2, seed=5)]
    rng = np.random.default_rng(1)
    for copy in copies:
        copy.reset()
    while copies[0].env.agents:
        assert copies[0].digest() == copies[1].digest()
        joint = rng.integers(0, 8, size=3)  # unavailable actions too: SMAX ignores them
        for copy in copies:
            copy.step(joint)
        assert copies[0].team_reward == copies[1].team_reward
    assert not copies[1].env.agents


def test_masks(env3m: Any) -> None:
    stop_only = np.eye(8, dtype=np.int8)[4]
    ranges, seen_attack, seen_death = np.asarray(env3m._core.env.unit_type_attack_ranges), False, False
    for seed in range(4):
        for actions, results in play(env3m, seed):
            infos = results[-1]
            if actions is not None:
                assert set(infos) == set(actions)  # a mask for every agent of the step, the dead included
            # Compare each mask with the state it was computed from: moves and stop while alive, attacks on
            # living enemies in weapon range; a dead unit only stops.
            state = env3m._core._device_get(env3m._carry.world.state)
            alive, positions = np.asarray(state.unit_alive), np.asarray(state.unit_positions)
            for agent, info in infos.items():
                mask, i = info["action_mask"], env3m.possible_agents.index(agent)
                assert mask.dtype == np.int8 and mask.shape == (8,)
                if not alive[i]:
                    np.testing.assert_array_equal(mask, stop_only)
                    seen_death = True
                    continue
                in_range = np.linalg.norm(positions[3:] - positions[i], axis=1) < ranges[state.unit_types[i]]
                np.testing.assert_array_equal(mask[5:], (in_range & alive[3:]).astype(np.int8))
                np.testing.assert_array_equal(mask[:5], 1)
                seen_attack |= bool(mask[5:].any())
            if actions is not None and env3m.agents:
                for agent, terminated in results[2].items():  # the dead leave `agents`, the living stay
                    assert terminated == (agent not in env3m.agents) == (not alive[env3m.possible_agents.index(agent)])
    assert seen_attack and seen_death


def test_time_limit_truncates_every_remaining_agent(env2m: Any) -> None:
    env2m.reset(seed=3)
    for t in range(TRUNCATE_AT):
        assert env2m.agents == ["ally_0", "ally_1"]
        _, rewards, terminations, truncations, infos = env2m.step({agent: 4 for agent in env2m.agents})
        last = t == TRUNCATE_AT - 1
        assert truncations == {"ally_0": last, "ally_1": last}
        assert terminations == {"ally_0": False, "ally_1": False}
    assert env2m.agents == [] and env2m.episode_metrics() == {"win": 0.0}
    with pytest.raises(RuntimeError):
        env2m.step({})


def test_win_and_loss(env3m: Any) -> None:
    outcomes = {}
    for policy in ("reference", "random"):
        for seed in range(10):
            for actions, results in play(env3m, seed, policy):
                pass
            _, rewards, terminations, truncations, infos = results
            win = env3m.episode_metrics()["win"]
            if any(truncations.values()):  # the time limit: no battle end, no win
                assert win == 0.0 and not any(terminations.values())
                continue
            assert terminations and all(terminations.values()) and not any(truncations.values())
            assert all(info["won"] == bool(win) for info in infos.values())
            if win:
                assert all(reward > 1.0 for reward in rewards.values())  # the win bonus, shared
            outcomes.setdefault(win, (policy, seed))
            if len(outcomes) == 2:
                break
    assert set(outcomes) == {0.0, 1.0}, outcomes


def test_reference_policy_beats_random(env3m: Any) -> None:
    # Measured on seeds 0-99 of 3m: reference (jaxmarl's heuristic, "closest") 62 wins, random allowed actions 0;
    # 2s3z: 44 and 0. Here 20 episodes: the reference must win at least 5, random none.
    wins = {}
    for policy in ("reference", "random"):
        wins[policy] = 0.0
        for seed in range(20):
            for actions, results in play(env3m, seed, policy):
                if actions is not None and policy == "reference":
                    assert all(results[4][a]["action_mask"][x] == 1 for a, x in env3m.reference_actions().items())
            wins[policy] += env3m.episode_metrics()["win"]
    assert wins["reference"] >= 5 and wins["random"] == 0, wins


def test_bad_input() -> None:
    from env.smax import make_smax, scenario_size

    with pytest.raises(ValueError, match=r"'3m'.*corridor") as error:
        make_smax(3, 10, scenario="3q")
    assert "2s_vs_1sc" in str(error.value)
    with pytest.raises(ValueError, match=r"spine crawler"):
        make_smax(2, 10, scenario="2s_vs_1sc")
    with pytest.raises(ValueError, match=r"has 3 allies but the job has 5 ranks.*mpirun -n 3"):
        make_smax(5, 10, scenario="3m")
    with pytest.raises(ValueError, match=r"episode_length"):
        make_smax(4, 0, scenario="4m")  # no SMAC limit for a made-up scenario
    assert scenario_size("4m") == (4, 4) and scenario_size("2m_vs_1z") == (2, 1)
    assert scenario_size("5m_vs_7m") == (5, 7) and scenario_size("2s3z") == (5, 5)
    env = make_smax(2, TRUNCATE_AT, scenario="2m")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="must be in"):
        env.step({"ally_0": 7, "ally_1": 4})
    with pytest.raises(ValueError, match="no action"):
        env.step({"ally_0": 4})


def test_missing_jaxmarl_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from env.coupled import MissingWorldPackage
    from env.smax import make_smax

    monkeypatch.setitem(sys.modules, "jaxmarl", None)
    monkeypatch.setitem(sys.modules, "jaxmarl.environments.smax", None)
    with pytest.raises(MissingWorldPackage, match=r"pip install -e '\.\[smax\]'"):
        make_smax(3, 10, scenario="3m")


def test_seeding(env3m: Any) -> None:
    first, _ = env3m.reset(seed=7)
    again, _ = env3m.reset(seed=7)
    other, _ = env3m.reset(seed=8)
    for agent in env3m.possible_agents:
        assert first[agent].tobytes() == again[agent].tobytes()
    assert any(first[agent].tobytes() != other[agent].tobytes() for agent in env3m.possible_agents)


def test_render(env3m: Any) -> None:
    env3m.reset(seed=0)
    image = env3m.render()
    assert image.shape == (384, 384, 3) and image.dtype == np.uint8
    colours = {tuple(pixel) for pixel in image.reshape(-1, 3)}
    assert (40, 110, 235) in colours and (220, 50, 40) in colours and (40, 190, 60) in colours
