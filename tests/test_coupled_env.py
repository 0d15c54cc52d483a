"""Coupled worlds: copies stepped with the same joint actions stay identical, resume replays exactly."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from env.coupled import CoupledWorld, MissingWorldPackage, episode_seed, make_coupled_env

needs_mpe2 = pytest.mark.skipif(importlib.util.find_spec("mpe2") is None, reason="pip install mpe2")

N_AGENTS, EPISODE_LENGTH, SEED = 3, 8, 11


def world(agent_index: int) -> CoupledWorld:
    return CoupledWorld(make_coupled_env("simple_spread", N_AGENTS, EPISODE_LENGTH), agent_index, SEED)


@needs_mpe2
def test_copies_agree_every_step_and_return_the_own_observation() -> None:
    copies = [world(0), world(2)]
    reference = make_coupled_env("simple_spread", N_AGENTS, EPISODE_LENGTH)  # the whole team in one process
    rng = np.random.default_rng(0)
    for episode in range(2):
        own = [copy.reset() for copy in copies]
        expected, _ = reference.reset(seed=episode_seed(SEED, episode))
        assert copies[0].digest() == copies[1].digest()
        for k, copy in enumerate(copies):
            np.testing.assert_array_equal(own[k], expected[reference.possible_agents[copy.agent_index]])
        for _ in range(EPISODE_LENGTH):
            joint = rng.integers(0, copies[0].n_actions, size=N_AGENTS)
            results = [copy.step(joint) for copy in copies]
            expected, rewards, _, truncations, _ = reference.step(
                {agent: int(joint[k]) for k, agent in enumerate(reference.possible_agents)})
            assert copies[0].digest() == copies[1].digest()
            for (obs, reward, _, truncated), copy in zip(results, copies):
                agent = reference.possible_agents[copy.agent_index]
                np.testing.assert_array_equal(obs, expected[agent])
                assert reward == rewards[agent] and truncated == truncations[agent]
                assert copy.team_reward == pytest.approx(sum(rewards.values()), rel=1e-12)  # sum order only
        assert results[0][3] and not reference.agents  # truncated after EPISODE_LENGTH steps


@needs_mpe2
def test_digest_differs_when_a_joint_action_differs() -> None:
    a, b = world(0), world(1)
    a.reset(), b.reset()
    a.step(np.array([1, 2, 3]))
    b.step(np.array([1, 2, 4]))
    assert a.digest() != b.digest()


@needs_mpe2
def test_state_dict_round_trip_mid_episode_continues_identically() -> None:
    rng = np.random.default_rng(1)
    original = world(1)
    original.reset()
    original.step(rng.integers(0, 5, size=N_AGENTS))
    original.reset()  # second episode: the episode counter matters too
    for _ in range(3):
        original.step(rng.integers(0, 5, size=N_AGENTS))
    resumed = world(1)
    resumed.load_state_dict(original.state_dict())
    assert resumed.digest() == original.digest() and resumed.episode == original.episode
    for _ in range(EPISODE_LENGTH - 3):
        joint = rng.integers(0, 5, size=N_AGENTS)
        for x, y in zip(original.step(joint), resumed.step(joint)):
            np.testing.assert_array_equal(x, y)
        assert resumed.digest() == original.digest()
    np.testing.assert_array_equal(original.reset(), resumed.reset())


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpe2", None)  # makes `import mpe2` raise ImportError
    with pytest.raises(MissingWorldPackage, match=r"pip install mpe2"):
        make_coupled_env("simple_spread", N_AGENTS, EPISODE_LENGTH)


@needs_mpe2
def test_unknown_world_and_bad_joint_action_are_explained() -> None:
    with pytest.raises(ValueError, match="is not a known world .* nor a factory of your own, written package.module:function"):
        make_coupled_env("no_such_world", 2, 5)
    copy = world(0)
    copy.reset()
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        copy.step(np.zeros(2, dtype=int))


@needs_mpe2
def test_underlying_world_passes_the_parallel_api_test() -> None:
    from pettingzoo.test import parallel_api_test

    parallel_api_test(make_coupled_env("simple_spread", N_AGENTS, EPISODE_LENGTH), num_cycles=20)
