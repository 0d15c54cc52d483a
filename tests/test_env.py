"""The reward-collection world (env/): the reference numbers of docs/architecture.md, "The reward-collection world", the per-agent
copies against the whole-team PettingZoo view, the numpy/torch reward, and the pictures."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import env
from env.render import AGENT_COLOURS, BACKGROUND, render_figure, site_colours
from env.reward_world import COLLECTION_RADIUS, RewardFunction

# Written out by hand from docs/architecture.md for n = 10: n_cols = 4, n_rows = 3, dx = 20/5 = 4, dy = 20/4 = 5,
# site (-10 + (col+1)*4, -10 + (row+1)*5), row-major; values 1, 5, 10 cycling, divided by 10.
SITES_10 = [(-6, -5), (-2, -5), (2, -5), (6, -5), (-6, 0), (-2, 0), (2, 0), (6, 0), (-6, 5), (-2, 5)]
VALUES_10 = [0.1, 0.5, 1.0, 0.1, 0.5, 1.0, 0.1, 0.5, 1.0, 0.1]
NO_ACTION = np.zeros(2)


def test_reward_sites_are_the_reference_grid() -> None:
    sites, values = env.reward_sites()
    # Exact: 4 and 5 are exact steps, and k/10 rounds the same on both sides.
    np.testing.assert_array_equal(sites, SITES_10)
    np.testing.assert_array_equal(values, VALUES_10)
    assert sites.dtype == values.dtype == np.float64


@pytest.mark.parametrize("n, expected_sites", [
    (1, [(0, 0)]),  # 1 x 1 grid, dx = dy = 10: the centre
    (4, [(-10 / 3, -10 / 3), (10 / 3, -10 / 3), (-10 / 3, 10 / 3), (10 / 3, 10 / 3)]),  # 2 x 2, dx = dy = 20/3
    (5, [(-5, -10 / 3), (0, -10 / 3), (5, -10 / 3), (-5, 10 / 3), (0, 10 / 3)]),  # 3 cols x 2 rows, dx = 5, dy = 20/3
])
def test_reward_sites_for_other_counts(n: int, expected_sites: list[tuple[float, float]]) -> None:
    sites, values = env.reward_sites(n)
    np.testing.assert_allclose(sites, expected_sites, rtol=0, atol=1e-12)  # round-off of the thirds
    np.testing.assert_array_equal(values, VALUES_10[:n])


def test_collection_radius_is_strict() -> None:
    reward_fn = RewardFunction(*env.reward_sites(), action_penalty=False)
    site = np.array([-6.0, -5.0])  # worth 0.1
    assert COLLECTION_RADIUS == 0.5
    assert reward_fn(site + [0.4999, 0.0], NO_ACTION) == 0.1
    assert reward_fn(site + [-0.35, 0.35], NO_ACTION) == 0.1  # distance 0.495, diagonally
    assert reward_fn(site + [0.5, 0.0], NO_ACTION) == 0.0  # -5.5 - (-6) is exactly 0.5
    assert reward_fn(site + [0.0, -0.5], NO_ACTION) == 0.0


def test_a_point_near_two_sites_collects_both() -> None:
    reward_fn = RewardFunction(np.array([[0.0, 0.0], [0.6, 0.0]]), np.array([0.1, 0.5]), action_penalty=False)
    assert reward_fn(np.array([0.3, 0.0]), NO_ACTION) == pytest.approx(0.6, abs=1e-15)  # one rounding of 0.1 + 0.5
    assert reward_fn(np.array([-0.2, 0.0]), NO_ACTION) == 0.1


def test_an_agent_staying_on_a_site_collects_every_step() -> None:
    agent = env.AgentEnv(n_agents=5, agent_id=0, seed=0)  # starts at (6, 0), the site worth 0.5
    start = agent.reset()
    np.testing.assert_array_equal(start, (6.0, 0.0))
    for t in range(1, 101):
        position, reward, truncated = agent.step(NO_ACTION)
        np.testing.assert_array_equal(position, start)
        assert reward == 0.5
        assert truncated == (t == 100)


def test_reward_is_taken_at_the_new_position() -> None:
    agent = env.AgentEnv(n_agents=5, agent_id=0, seed=0, action_penalty=False)  # starts on the site (6, 0)
    agent.reset()
    assert agent.step([-1.0, 0.0])[1] == 0.0  # left the site: ~1 away from it
    assert agent.step([1.0, 0.0])[1] == 0.5  # back on it, within rounding of the start


def test_positions_clip_at_the_world_edge_and_actions_clip_to_the_box() -> None:
    agent, overdriven = env.AgentEnv(1, 0, seed=4), env.AgentEnv(1, 0, seed=4)  # one agent: starts at the centre
    agent.reset(), overdriven.reset()
    first, _, _ = agent.step([1.0, 0.0])
    np.testing.assert_array_equal(first, [agent.gain[0], 0.0])  # exact: 0 + 1 * gain
    for _ in range(19):  # 20 steps of gain ~1 would go past x = 10
        position, _, _ = agent.step([1.0, 0.0])
    np.testing.assert_array_equal(position, [10.0, 0.0])
    for _ in range(20):
        overdriven_position, _, _ = overdriven.step([7.0, 0.0])
    np.testing.assert_array_equal(overdriven_position, position)
    assert env.WORLD_LOW == -10.0 and env.WORLD_HIGH == 10.0


@pytest.mark.parametrize("action, penalty", [((0.3, -0.2), 0.5), ((3.0, -0.5), 1.5), ((-2.0, -2.0), 2.0)])
def test_action_penalty_is_the_sum_of_absolute_clipped_actions(action: tuple[float, float], penalty: float) -> None:
    # From the centre one step reaches at most ~1.4 away; the nearest sites are 2 away.
    with_penalty = env.AgentEnv(1, 0, seed=0, action_penalty=True)
    without_penalty = env.AgentEnv(1, 0, seed=0, action_penalty=False)
    with_penalty.reset(), without_penalty.reset()
    assert with_penalty.step(action)[1] == pytest.approx(-penalty, abs=1e-15)  # one rounding in the sum
    assert without_penalty.step(action)[1] == 0.0


def test_start_positions_lie_on_the_radius_6_circle() -> None:
    # Round-off of cos/sin at multiples of pi/2.
    np.testing.assert_allclose(env.start_positions(4), [(6, 0), (0, 6), (-6, 0), (0, -6)], rtol=0, atol=1e-14)
    fives = env.start_positions(5)
    np.testing.assert_allclose(np.hypot(fives[:, 0], fives[:, 1]), 6.0, rtol=1e-15)
    np.testing.assert_allclose(np.arctan2(fives[:, 1], fives[:, 0]) % (2 * np.pi), 2 * np.pi * np.arange(5) / 5,
                               rtol=0, atol=1e-14)
    np.testing.assert_array_equal(env.start_positions(1), [(0.0, 0.0)])
    for i in range(5):
        np.testing.assert_array_equal(env.AgentEnv(5, i, seed=0).reset(), fives[i])


def test_gains_agree_across_copies_with_one_seed_and_differ_with_another() -> None:
    copies = [env.AgentEnv(5, i, seed=7) for i in range(5)]
    team = env.TeamEnv(n_agents=5, seed=7)
    np.testing.assert_array_equal(np.stack([c.gain for c in copies]), team.gains)
    np.testing.assert_array_equal(env.AgentEnv(5, 3, seed=7).gain, copies[3].gain)
    assert not np.any(env.AgentEnv(5, 3, seed=8).gain == copies[3].gain)
    assert len(np.unique(team.gains)) == team.gains.size  # per agent and per axis, not one shared draw


def test_gains_are_normal_around_1_with_std_0_1() -> None:
    gains = env.agent_gains(20_000, seed=0)
    n = gains.size
    # 5 standard errors: sigma/sqrt(n) for the mean, sigma/sqrt(2n) for the standard deviation.
    assert abs(gains.mean() - 1.0) < 5 * 0.1 / math.sqrt(n)
    assert abs(gains.std() - 0.1) < 5 * 0.1 / math.sqrt(2 * n)


def _batch_of_positions_and_actions() -> tuple[np.ndarray, np.ndarray]:
    """(3, 4, 5, 2) positions, half uniform in the world and half within 0.45 of a site, and actions."""
    rng = np.random.default_rng(1)
    sites, _ = env.reward_sites()
    uniform = rng.uniform(-10, 10, size=(30, 2))
    angles, radii = rng.uniform(0, 2 * np.pi, 30), rng.uniform(0, 0.45, 30)
    near_sites = sites[rng.integers(0, len(sites), 30)] + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    positions = rng.permutation(np.concatenate([uniform, near_sites])).reshape(3, 4, 5, 2)
    return positions, rng.uniform(-1, 1, size=(3, 4, 5, 2))


def test_reward_function_matches_a_loop_over_points_and_sites() -> None:
    positions, actions = _batch_of_positions_and_actions()
    sites, values = env.reward_sites()
    collected, expected = np.zeros(positions.shape[:-1]), np.zeros(positions.shape[:-1])
    for index in np.ndindex(*expected.shape):
        collected[index] = sum(v for s, v in zip(sites, values) if math.dist(positions[index], s) < 0.5)
        expected[index] = collected[index] - abs(actions[index][0]) - abs(actions[index][1])
    got = env.reward(positions, actions)
    assert got.shape == (3, 4, 5)
    assert (collected > 0).sum() >= 30  # the batch really collects: every near-site point at least
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)  # summation order only
    assert env.reward(positions[0, 0, 0], actions[0, 0, 0]).shape == ()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("action_penalty", [True, False])
def test_reward_function_gives_the_same_on_torch_and_numpy(device: str, action_penalty: bool) -> None:
    positions, actions = _batch_of_positions_and_actions()
    reward_fn = RewardFunction(*env.reward_sites(), action_penalty=action_penalty)
    expected = reward_fn(positions, actions)
    got = reward_fn(torch.tensor(positions, device=device), torch.tensor(actions, device=device))
    assert isinstance(got, torch.Tensor) and got.device.type == device and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=0, atol=1e-14)  # summation order only
    as_float32 = reward_fn(torch.tensor(positions, dtype=torch.float32, device=device),
                           torch.tensor(actions, dtype=torch.float32, device=device))
    assert as_float32.dtype == torch.float32 and as_float32.shape == (3, 4, 5)
    np.testing.assert_allclose(as_float32.cpu().numpy(), expected, rtol=0, atol=1e-6)  # float32 rounding


@pytest.mark.parametrize("reward_sharing", ["team", "local"])
def test_team_view_equals_the_per_agent_copies(reward_sharing: str) -> None:
    n = 5
    team = env.TeamEnv(n_agents=n, seed=3, reward_sharing=reward_sharing)
    copies = [env.AgentEnv(n, i, seed=3) for i in range(n)]
    team_obs, _ = team.reset()
    own_obs = [c.reset() for c in copies]
    rng = np.random.default_rng(0)
    collecting_steps = 0
    for t in range(100):
        # Head for the nearest site, noisily and with overshoot, so agents collect and actions clip.
        actions = {}
        for i, agent in enumerate(team.agents):
            nearest = team.sites[np.argmin(np.linalg.norm(team.sites - own_obs[i], axis=1))]
            actions[agent] = nearest - own_obs[i] + rng.normal(0.0, 0.3, 2)
        team_obs, rewards, terminations, truncations, infos = team.step(actions)
        stepped = [c.step(actions[f"agent_{i}"]) for i, c in enumerate(copies)]
        own_obs = [s[0] for s in stepped]
        own_rewards = np.array([s[1] for s in stepped])
        for i, agent in enumerate(team.possible_agents):
            np.testing.assert_array_equal(team_obs[agent], own_obs[i])  # exact: the same float operations
            assert infos[agent]["own_reward"] == own_rewards[i]
            expected = own_rewards.sum() if reward_sharing == "team" else own_rewards[i]
            assert rewards[agent] == pytest.approx(expected, abs=1e-13)  # summation order over agents
            assert truncations[agent] == stepped[i][2] == (t == 99)
            assert terminations[agent] is False
        collecting_steps += int((own_rewards > 0).sum())
    assert team.agents == []
    assert collecting_steps > 100  # the walk really visited sites


def test_pettingzoo_parallel_api() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PettingZoo reports most API mistakes as warnings
        parallel_api_test(env.TeamEnv(), num_cycles=1000)
        parallel_api_test(env.parallel_env(n_agents=3, reward_sharing="local"), num_cycles=1000)
        parallel_seed_test(env.TeamEnv)


def test_observations_stay_in_the_observation_space() -> None:
    team = env.TeamEnv(n_agents=3, seed=1)
    observations, _ = team.reset(seed=1)
    rng = np.random.default_rng(2)
    while team.agents:
        for agent, observation in observations.items():
            assert team.observation_space(agent).contains(observation)
        # Large, persistent pushes drive agents into the walls.
        observations, *_ = team.step({agent: rng.normal(0.0, 3.0, 2) + 2.0 for agent in team.agents})
    assert team.positions.max() == env.WORLD_HIGH


def test_reset_seed_rederives_the_gains() -> None:
    team = env.TeamEnv(n_agents=5, seed=0)
    np.testing.assert_array_equal(team.gains, env.agent_gains(5, 0))
    team.reset(seed=5)
    np.testing.assert_array_equal(team.gains, env.agent_gains(5, 5))
    team.reset()
    np.testing.assert_array_equal(team.gains, env.agent_gains(5, 5))


@pytest.mark.parametrize("make, message", [
    (lambda: env.AgentEnv(5, 5, seed=0), "agent_id = 5"),
    (lambda: env.AgentEnv(0, 0, seed=0), "n_agents = 0"),
    (lambda: env.TeamEnv(reward_sharing="global"), "reward_sharing = 'global'"),
    (lambda: env.reward_sites(0), "n_rewards = 0"),
])
def test_bad_arguments_are_refused_by_name(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_stepping_past_the_episode_or_with_missing_actions_is_refused() -> None:
    agent = env.AgentEnv(2, 1, seed=0, episode_length=1)
    agent.reset()
    assert agent.step(NO_ACTION)[2]
    with pytest.raises(RuntimeError, match="call reset"):
        agent.step(NO_ACTION)
    with pytest.raises(ValueError, match="finite"):
        agent.reset(), agent.step([np.nan, 0.0])
    team = env.TeamEnv(n_agents=2)
    team.reset()
    with pytest.raises(ValueError, match="agent_1"):
        team.step({"agent_0": NO_ACTION})


def _pixel(x: float, y: float, size: int) -> tuple[int, int]:
    """(row, col) of the pixel holding world point (x, y): north up, 20 world units across."""
    return int((10.0 - y) / 20.0 * size), int((x + 10.0) / 20.0 * size)


def test_render_draws_agents_where_they_are_and_sites_by_value() -> None:
    sites, values = env.reward_sites()
    positions = np.array([(3.0, 2.5), (-7.3, 8.1)])  # both >= 2.5 from every site
    image = env.render_rgb(positions, sites, values, size=400)
    assert image.shape == (400, 400, 3) and image.dtype == np.uint8
    for i, (x, y) in enumerate(positions):
        row, col = _pixel(x, y, 400)
        np.testing.assert_array_equal(image[row, col], AGENT_COLOURS[i])
        painted = np.argwhere(np.all(image == AGENT_COLOURS[i], axis=-1))
        assert np.hypot(*(painted - (row, col)).T).max() <= 0.2 * 20 + 1.5  # dot radius 0.2 units, pixel rounding
    np.testing.assert_array_equal(image[0, 0], BACKGROUND)
    # Inside the collection radius the site's shade, just outside it the background; larger value, darker.
    for (x, y), colour in zip(sites, site_colours(values)):
        np.testing.assert_array_equal(image[_pixel(x + 0.45, y, 400)], colour)
        np.testing.assert_array_equal(image[_pixel(x + 0.55, y, 400)], BACKGROUND)
    brightness = [int(image[_pixel(x, y, 400)].sum()) for x, y in sites[:3]]  # values 0.1, 0.5, 1.0
    assert brightness[0] > brightness[1] > brightness[2]


def test_team_env_renders_its_agents() -> None:
    team = env.TeamEnv(n_agents=5, render_mode="rgb_array")
    team.reset()
    team.step({agent: NO_ACTION for agent in team.agents})
    frame = team.render()
    assert frame.shape == (400, 400, 3) and frame.dtype == np.uint8
    for i, (x, y) in enumerate(team.positions):
        np.testing.assert_array_equal(frame[_pixel(x, y, 400)], AGENT_COLOURS[i])


def test_render_figure_draws_every_site_and_agent() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites, values = env.reward_sites()
    figure = render_figure(env.start_positions(5), sites, values)
    ax = figure.axes[0]
    assert ax.get_xlim() == (env.WORLD_LOW, env.WORLD_HIGH) and ax.get_ylim() == (env.WORLD_LOW, env.WORLD_HIGH)
    circles = [p for p in ax.patches if isinstance(p, matplotlib.patches.Circle)]
    np.testing.assert_array_equal([c.center for c in circles], sites)
    assert {c.radius for c in circles} == {0.5}
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), env.start_positions(5))
    plt.close(figure)


def test_human_render_mode_shows_the_rgb_frame() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")  # no display in tests; the window still receives the frames

    team = env.TeamEnv(n_agents=2, render_mode="human")
    team.reset()
    team.step({agent: (0.5, 0.5) for agent in team.agents})
    expected = env.render_rgb(team.positions, team.sites, team.values, trails=team.trails[:2])
    np.testing.assert_array_equal(team._window.artist.get_array(), expected)
    team.close()
    assert team._window.artist is None
