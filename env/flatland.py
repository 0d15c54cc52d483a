"""Flatland (trains on a rail grid, flatland-rl 4.3) as a coupled world in MAMBA's setting: a PettingZoo ParallelEnv.

`make_flatland(n_agents, episode_length, scenario="5_agents")` builds one copy of a Flatland world; every
rank holds one (env/coupled.py). The trains ``train_0 .. train_{n-1}`` are the agents, one per rank. The
setting is MAMBA's (jbr-ai-labs/mamba, train.py with env/flatland/params.py, written for flatland 2.2.2):
a sparse rail network, trains of speed 1 that break down now and then, MAMBA's tree observation, its three
actions, its reward and its deadlock rule. The copy promises:

  * Determinism: `reset(seed=s)` makes the episode a pure function of s: the rail, the trains' lines,
    flatland's timetable and malfunctions (a fresh RailEnv reset with s) and the trains' random ids in the
    observation (numpy's generator seeded with s). The same seed and joint actions give bit-identical
    observations, rewards, masks and dones on every copy, in any process, whatever PYTHONHASHSEED.
    Python's global `random` (which flatland reseeds) is left as it was.
  * Observations: MAMBA's tree observation of depth 3 (env/flatland_tree.py), Box float32 of 205 floats.
  * Actions, Discrete(3), MAMBA's: 0 = the leftmost available move, 1 = the rightmost available move,
    2 = stop. Only at a decision cell does the policy choose (MAMBA's GreedyChecker: switches and crossings,
    every train's target cell, and the cells just before those): the moves that exist there, leftmost
    first (1 only where there are two), and stop. Elsewhere the train has one way to go and the world moves
    it (MAMBA's greedy step): the mask offers only action 0, and whatever the action, the train moves on.
    A train that is broken down also has only action 0 (nothing it does matters until it is repaired).
    Trains that have not departed yet (all are ready at step 0, as MAMBA's AllAgentLauncher on flatland 2,
    which has no timetable) choose to depart (0) or to wait (2); flatland's departure times are set to 0.
    `infos[agent]["action_mask"]` (np.int8 (3,), 1 = available) is in the infos of `reset()` and of every
    `step()`; an arrived or deadlocked train has the mask [1, 0, 0]. An unavailable action is executed as
    action 0 (MAMBA's rule for an invalid choice; MAMBA's policy saw no mask).
  * Rewards (MAMBA's RewardsComposer): +10 once on arrival, +0.01 per unit of progress on flatland's
    distance map to the own target (negative when the train moves away; distances from where no path leads
    count as 1000), -5 once on deadlock.
  * Ends: a train that arrives or is deadlocked (MAMBA's DeadlockChecker: it can never move again) is
    reported with `terminations[agent] = True` in that step and leaves `agents` (a deadlocked train stays
    on the rail, stopped, blocking others); the others go on. The step limit truncates every remaining
    train (`truncations = True`, `terminations = False`). Then `agents` is empty and `episode_metrics()`
    says `{"arrival": share of trains that arrived}` (MAMBA's metric).
  * Step limit: `episode_length` steps; `episode_length = 0` takes flatland 4.x's own limit for the
    generated timetable, `timetable_generator`'s min(ceil(1.5 * longest shortest path) + 0.2 * mean shortest
    path, 3 * 8 * (width + height + trains / cities)), about 100-150 steps on 5_agents. MAMBA ran on flatland
    2.2.2, whose limit was 8 * (width + height + trains / cities): 573 steps on 5_agents, 580 on 10_agents
    (`MAMBA_EPISODE_LENGTH`); pass that to train with MAMBA's longer episodes.
  * `reference_actions(observations)`: every train follows its shortest path (flatland's distance map; at a
    decision cell the move whose next cell is nearest to the target, the leftmost on a tie; it departs at
    once and never stops): always an available action, deterministic given the state.
  * `render()` with render_mode "rgb_array": an (H, W, 3) uint8 image drawn with numpy (flatland's own
    RenderTool needs recordtype and pyglet, which this world does not install).

Scenarios (`SCENARIOS`): MAMBA's "5_agents" (35 x 35, 5 trains, 3 cities, malfunction rate 1/100) and
"10_agents" (35 x 35, 10 trains, 4 cities, 1/150), its "2_agents" (FewAgents: 35 high, 25 wide, 2 trains,
2 cities, 1/50) and "20_agents" (the setting train.py calls "15_agents": 40 x 60, 20 trains, 6 cities,
1/200), and "tiny" (25 x 25, 3 trains, 2 cities of 2 tracks, 1/50) for fast tests. Every scenario: sparse
rail generator with at most 2 rails between cities and (but tiny) 4 tracks (2 pairs) in a city, cities placed
at random, speed 1; each step every train breaks down with probability 1 - exp(-rate), for 20-50 steps.
Options override any setting but the train count.

Install: flatland-rl 4.3.0 pins numpy<2 but runs under numpy 2: `make flatland` installs it without its
dependencies, then the few it needs to import (see the Makefile).
"""

from __future__ import annotations

import random
import re
from typing import Any

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

from env.coupled import MissingWorldPackage, register_world
from env.flatland_tree import ARRIVED, MOVEMENT, ON_MAP, UNDEPARTED, DeadlockChecker, RailTables, Trains, \
    TreeObservation

INSTALL_HINT = "make flatland"
N_ACTIONS = 3
LEFTMOST, RIGHTMOST, STOP = 0, 1, 2
TREE_DEPTH = 3  # MAMBA's SimpleObservation(max_depth=3): 205 floats
FINISH_REWARD, PROGRESS_REWARD, DEADLOCK_REWARD = 10.0, 0.01, -5.0
UNREACHABLE_DISTANCE = 1000.0  # MAMBA's NearRewardShaper: an infinite distance counts as 1e3

# flatland's RailEnvActions (values, so this module imports without flatland)
_DO_NOTHING, _MOVE_LEFT, _MOVE_FORWARD, _MOVE_RIGHT, _STOP_MOVING = 0, 1, 2, 3, 4

# MAMBA's settings (env/flatland/params.py); train count, grid, sparse rail generator, malfunctions.
SCENARIOS: dict[str, dict[str, Any]] = {
    "5_agents": {"n_trains": 5, "width": 35, "height": 35, "n_cities": 3, "grid_mode": False,
                 "max_rails_between_cities": 2, "max_rail_pairs_in_city": 2,
                 "malfunction_rate": 1 / 100, "malfunction_min": 20, "malfunction_max": 50},
    "10_agents": {"n_trains": 10, "width": 35, "height": 35, "n_cities": 4, "grid_mode": False,
                  "max_rails_between_cities": 2, "max_rail_pairs_in_city": 2,
                  "malfunction_rate": 1 / 150, "malfunction_min": 20, "malfunction_max": 50},
    "2_agents": {"n_trains": 2, "width": 25, "height": 35, "n_cities": 2, "grid_mode": False,
                 "max_rails_between_cities": 2, "max_rail_pairs_in_city": 2,
                 "malfunction_rate": 1 / 50, "malfunction_min": 20, "malfunction_max": 50},
    "20_agents": {"n_trains": 20, "width": 60, "height": 40, "n_cities": 6, "grid_mode": False,
                  "max_rails_between_cities": 2, "max_rail_pairs_in_city": 2,
                  "malfunction_rate": 1 / 200, "malfunction_min": 20, "malfunction_max": 50},
    "tiny": {"n_trains": 3, "width": 25, "height": 25, "n_cities": 2, "grid_mode": False,
             "max_rails_between_cities": 2, "max_rail_pairs_in_city": 1,
             "malfunction_rate": 1 / 50, "malfunction_min": 20, "malfunction_max": 50},
}
# flatland 2.2.2's limit, 8 * (width + height + trains / cities), which MAMBA's episodes ran to.
MAMBA_EPISODE_LENGTH: dict[str, int] = {
    name: int(8 * (s["width"] + s["height"] + s["n_trains"] / s["n_cities"])) for name, s in SCENARIOS.items()}
_WORLD_OPTIONS = ("tree_depth", "render_mode")

_COLOURS = {"background": (250, 250, 245), "rail": (120, 120, 120), "deadlocked": (60, 60, 60)}
_TRAIN_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                  (240, 50, 230), (210, 180, 20), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128))


def known_scenarios() -> list[str]:
    return sorted(SCENARIOS)


def _import_flatland() -> dict[str, Any]:
    try:
        from flatland.core.env_observation_builder import ObservationBuilder
        from flatland.envs.line_generators import sparse_line_generator
        from flatland.envs.malfunction_generators import MalfunctionParameters, ParamMalfunctionGen
        from flatland.envs.rail_env import RailEnv
        from flatland.envs.rail_generators import sparse_rail_generator
        from flatland.envs.step_utils.states import TrainState
    except ImportError as error:
        raise MissingWorldPackage(f"world 'flatland' needs flatland-rl 4.3.0, which is not installed (or lacks a "
                                  f"dependency: {error}); install it with `{INSTALL_HINT}`") from error

    class NoObservation(ObservationBuilder):
        """The world builds MAMBA's observation itself, after its deadlock check; flatland builds none."""

        def get_many(self, handles: Any = None) -> dict:
            return {}

    return {"RailEnv": RailEnv, "sparse_rail_generator": sparse_rail_generator, "TrainState": TrainState,
            "sparse_line_generator": sparse_line_generator, "MalfunctionParameters": MalfunctionParameters,
            "ParamMalfunctionGen": ParamMalfunctionGen, "NoObservation": NoObservation}


def make_flatland(n_agents: int, episode_length: int, *, scenario: str = "5_agents",
                  **options: Any) -> FlatlandParallelEnv:
    """A Flatland world of `scenario` (see SCENARIOS) with one agent per train, truncated after
    `episode_length` steps (0: flatland's own limit for the generated timetable).

    `options`: any setting of the scenario but n_trains (width, height, n_cities, grid_mode,
    max_rails_between_cities, max_rail_pairs_in_city, malfunction_rate, malfunction_min, malfunction_max),
    tree_depth (3, MAMBA's) and render_mode (None or "rgb_array")."""
    settings = check_flatland(n_agents, episode_length, scenario=scenario, **options)
    tree_depth = int(options.pop("tree_depth", TREE_DEPTH))
    render_mode = options.pop("render_mode", None)
    settings.update(options)
    return FlatlandParallelEnv(scenario, settings, episode_length, tree_depth, render_mode)


def scenario_settings(scenario: str) -> dict[str, Any]:
    """The settings of `scenario`: one of SCENARIOS, or "tiny_<n>" (the tiny world with n trains, for tests on any
    rank count); ValueError naming the known ones."""
    if (match := re.fullmatch(r"tiny_(\d+)", scenario)) and int(match[1]) >= 1:
        return {**SCENARIOS["tiny"], "n_trains": int(match[1])}
    if scenario not in SCENARIOS:
        raise ValueError(f"env.scenario = {scenario!r} is not a Flatland scenario; known scenarios: "
                         f"{known_scenarios()} and tiny_<n> (the tiny world with n trains)")
    return dict(SCENARIOS[scenario])


def check_flatland(n_agents: int, episode_length: int, *, scenario: str = "5_agents", **options: Any) -> dict[str, Any]:
    """What `make_flatland` refuses, found without building the world: ValueError naming the problem and the fix.
    Returns the scenario's settings."""
    settings = scenario_settings(scenario)
    n_trains = settings["n_trains"]
    if n_agents != n_trains:
        raise ValueError(f"Flatland scenario {scenario!r} has {n_trains} trains but the job has {n_agents} ranks: "
                         f"run it with `mpirun -n {n_trains}` (one rank per train)")
    if episode_length < 0:
        raise ValueError(f"episode_length = {episode_length}: must be >= 1 (or 0 for flatland's own limit)")
    unknown = sorted(set(options) - set(settings) - set(_WORLD_OPTIONS) | ({"n_trains"} & set(options)))
    if unknown:
        raise ValueError(f"Flatland options {unknown} are not settings of a scenario; allowed: "
                         f"{sorted(set(settings) - {'n_trains'}) + list(_WORLD_OPTIONS)} "
                         "(the train count is the scenario's)")
    return settings


class FlatlandParallelEnv(ParallelEnv):
    """One copy of a Flatland world in MAMBA's setting (see the module docstring for what it promises)."""

    metadata = {"name": "flatland_v0", "render_modes": ["rgb_array"], "render_fps": 4, "is_parallelizable": True}
    metric_keys = ("arrival",)  # what episode_metrics() gives
    action_masks = True  # infos carry action_mask

    def __init__(self, scenario: str, settings: dict[str, Any], episode_length: int = 0,
                 tree_depth: int = TREE_DEPTH, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode = {render_mode!r}: must be None or one of {self.metadata['render_modes']}")
        self._fl = _import_flatland()
        self.scenario = scenario
        self.settings = dict(settings)
        self.episode_length = int(episode_length)
        self.render_mode = render_mode
        self.n_trains = int(settings["n_trains"])
        self.possible_agents = [f"train_{k}" for k in range(self.n_trains)]
        self.agents: list[str] = []
        self._index = {agent: k for k, agent in enumerate(self.possible_agents)}
        self._tree = TreeObservation(tree_depth)
        self._observation_spaces = {agent: gymnasium.spaces.Box(-np.inf, np.inf, (self._tree.size,), np.float32)
                                    for agent in self.possible_agents}
        self._action_spaces = {agent: gymnasium.spaces.Discrete(N_ACTIONS) for agent in self.possible_agents}
        self._seeds = np.random.default_rng()  # seeds of reset(seed=None): continue from the last seed given
        self._rail_env: Any = None
        self._ended = False
        self.max_episode_steps = 0  # the step limit of the running episode

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return self._action_spaces[agent]

    # -- episode -------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        if seed is not None:
            if int(seed) < 0:
                raise ValueError(f"seed = {seed}: must be >= 0")
            self._seeds = np.random.default_rng(int(seed))
            episode_seed = int(seed)
        else:
            episode_seed = int(self._seeds.integers(2 ** 32))
        self._build(episode_seed)
        self.agents = list(self.possible_agents)
        self._ended = False
        handles = list(range(self.n_trains))
        observations = self._tree.observe(self._trains, self._deadlocks.deadlocked, handles)
        self._update_choices()
        return ({self.possible_agents[h]: observations[h] for h in handles},
                {self.possible_agents[h]: self._info(h) for h in handles})

    def _build(self, seed: int) -> None:
        """A fresh RailEnv for every episode (flatland's malfunction generator keeps random numbers across
        resets), reset with `seed`; departures at step 0; MAMBA's tables, deadlock check and distances."""
        fl, s = self._fl, self.settings
        malfunctions = fl["ParamMalfunctionGen"](fl["MalfunctionParameters"](
            float(s["malfunction_rate"]), int(s["malfunction_min"]), int(s["malfunction_max"])))
        _clear_instance_caches(self._rail_env)  # before the old env goes: flatland's caches would keep it
        python_random = random.getstate()  # flatland reseeds Python's global random; give it back untouched
        try:
            env = fl["RailEnv"](
                width=int(s["width"]), height=int(s["height"]), number_of_agents=self.n_trains,
                rail_generator=fl["sparse_rail_generator"](
                    max_num_cities=int(s["n_cities"]), grid_mode=bool(s["grid_mode"]),
                    max_rails_between_cities=int(s["max_rails_between_cities"]),
                    max_rail_pairs_in_city=int(s["max_rail_pairs_in_city"])),
                line_generator=fl["sparse_line_generator"]({1.0: 1.0}),
                malfunction_generator=malfunctions, obs_builder_object=fl["NoObservation"](),
                remove_agents_at_target=True, random_seed=seed)
            env.reset(random_seed=seed)
        finally:
            random.setstate(python_random)
        ready = fl["TrainState"].READY_TO_DEPART
        for agent in env.agents:  # every train may leave at step 0 (MAMBA's AllAgentLauncher, flatland 2)
            agent.earliest_departure = 0
            agent.state_machine.set_state(ready)
        self.max_episode_steps = self.episode_length or int(env._max_episode_steps)
        env._max_episode_steps = self.max_episode_steps  # flatland ends its episode where this world does
        self._rail_env = env
        self._targets = [tuple(int(x) for x in next(iter(agent.targets))[0]) for agent in env.agents]
        self._tables = RailTables(env.rail.grid, env.rail.transitions.get_transitions, self._targets)
        self._distance = np.asarray(env.distance_map.get(), dtype=np.float64)
        self._tree.reset(self._tables, self._distance, self._targets,
                         np.random.default_rng(seed).uniform(0.0, 1.0, self.n_trains))
        self._deadlocks = DeadlockChecker(self._tables, self.n_trains)
        self._steps = 0
        self._arrived = [False] * self.n_trains
        self._dead = [False] * self.n_trains  # deadlocked and reported
        self._trains = self._snapshot()
        self._deadlocks.update(self._trains)
        self._progress = [self._distance_left(h) for h in range(self.n_trains)]

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("FlatlandParallelEnv.step without a running episode: call reset() first")
        unknown = set(actions) - set(self.possible_agents)
        missing = [agent for agent in self.agents if agent not in actions]
        if unknown or missing:
            raise ValueError(f"actions: {sorted(unknown)} are not agents of this world and {missing} have no "
                             f"action; give one action for each of {self.agents}")
        alive = [self._index[agent] for agent in self.agents]
        flatland_actions = {h: _STOP_MOVING for h in range(self.n_trains) if self._dead[h]}
        for h in alive:
            action = int(actions[self.possible_agents[h]])
            if not 0 <= action < N_ACTIONS:
                raise ValueError(f"action {action} of {self.possible_agents[h]}: must be in [0, {N_ACTIONS - 1}]")
            if not self._masks[h][action]:
                action = LEFTMOST  # MAMBA: an invalid choice takes the first available move
            flatland_actions[h] = self._options[h][action]
        self._rail_env.step(flatland_actions)
        self._steps += 1
        self._trains = self._snapshot()
        self._deadlocks.update(self._trains)
        observations = self._tree.observe(self._trains, self._deadlocks.deadlocked, alive)
        time_up = self._steps >= self.max_episode_steps
        out_obs, rewards, terminations, truncations, infos = {}, {}, {}, {}, {}
        for h in alive:
            agent = self.possible_agents[h]
            left = self._distance_left(h)
            reward = (self._progress[h] - left) * PROGRESS_REWARD
            self._progress[h] = left
            arrived = self._trains.where[h] == ARRIVED
            deadlocked = self._deadlocks.deadlocked[h]
            if arrived:
                reward += FINISH_REWARD
                self._arrived[h] = True
            elif deadlocked:
                reward += DEADLOCK_REWARD
                self._dead[h] = True
            out_obs[agent] = observations[h]
            rewards[agent] = float(reward)
            terminations[agent] = bool(arrived or deadlocked)
            truncations[agent] = bool(time_up and not terminations[agent])
        self.agents = [agent for agent in self.agents if not (terminations[agent] or truncations[agent])]
        self._ended = not self.agents
        self._update_choices()
        for h in alive:
            infos[self.possible_agents[h]] = self._info(h)
        return out_obs, rewards, terminations, truncations, infos

    def episode_metrics(self) -> dict[str, float]:
        """{"arrival": trains that arrived / trains}, once the episode has ended."""
        if not self._ended:
            raise RuntimeError("episode_metrics() before the episode ended: step until env.agents is empty")
        return {"arrival": sum(self._arrived) / self.n_trains}

    def reference_actions(self, observations: dict[str, np.ndarray] | None = None) -> dict[str, int]:
        """Every train in `agents` follows its shortest path on flatland's distance map: it departs at once,
        never stops, and at a decision cell takes the move whose next cell is nearest to its target (the
        leftmost on a tie). Read from the state (the observations are the env's own, so not read)."""
        if self._rail_env is None:
            raise RuntimeError("FlatlandParallelEnv.reference_actions before reset()")
        actions = {}
        for agent in self.agents:
            h = self._index[agent]
            action = LEFTMOST
            if self._masks[h][RIGHTMOST]:
                (r, c), d = self._trains.position[h], self._trains.direction[h]
                left, right = self._moves[h][0], self._moves[h][-1]
                if self._next_distance(h, r, c, right) < self._next_distance(h, r, c, left):
                    action = RIGHTMOST
            actions[agent] = action
        return actions

    # -- state ---------------------------------------------------------------------------------------

    def _snapshot(self) -> Trains:
        where, position, direction, malfunction = [], [], [], []
        for h, agent in enumerate(self._rail_env.agents):
            state = agent.state
            if state.is_on_map_state():
                (r, c), d = agent.current_configuration
                where.append(ON_MAP)
            elif state.is_off_map_state():
                (r, c), d = agent.initial_configuration
                where.append(UNDEPARTED)
            else:  # DONE: arrived, removed from the rail
                (r, c), d = self._targets[h], agent.initial_configuration[1]
                where.append(ARRIVED)
            position.append((int(r), int(c)))
            direction.append(int(d))
            malfunction.append(int(agent.malfunction_handler.malfunction_down_counter))
        return Trains(where, position, direction, malfunction)

    def _distance_left(self, h: int) -> float:
        """MAMBA's NearRewardShaper distance: 0 once arrived, 1000 where no path leads to the target."""
        trains = self._trains
        if trains.where[h] == ARRIVED:
            return 0.0
        (r, c), d = trains.position[h], trains.direction[h]
        dist = float(self._distance[h, r, c, d])
        return UNREACHABLE_DISTANCE if dist == np.inf else dist

    def _next_distance(self, h: int, r: int, c: int, move: int) -> float:
        return float(self._distance[h, r + MOVEMENT[move][0], c + MOVEMENT[move][1], move])

    def _update_choices(self) -> None:
        """Every train's mask and what each of its actions sends to flatland, in the state just reached."""
        trains, tables = self._trains, self._tables
        self._masks, self._options, self._moves = [], [], []
        for h in range(self.n_trains):
            (r, c), d = trains.position[h], trains.direction[h]
            moves = tables.moves((r, c), d) if trains.where[h] != ARRIVED else []
            mask, options = [1, 0, 0], [_DO_NOTHING, _DO_NOTHING, _DO_NOTHING]
            if trains.where[h] == ARRIVED or self._dead[h] or trains.malfunction[h] > 0:
                pass  # nothing to choose: broken down (the action would not matter) or out of the episode
            elif trains.where[h] == UNDEPARTED:
                # depart (flatland puts the train on its start cell, facing its initial direction) or wait
                mask, options = [1, 0, 1], [_move_action(d, moves[0]), _DO_NOTHING, _DO_NOTHING]
            elif tables.decision[r][c][d]:
                mask = [1, int(len(moves) > 1), 1]
                options = [_move_action(d, moves[0]), _move_action(d, moves[-1]), _STOP_MOVING]
            else:  # one way to go: the world moves the train on (MAMBA's greedy step)
                options = [_move_action(d, moves[0])] * 3
            self._masks.append(mask)
            self._options.append(options)
            self._moves.append(moves)

    def _info(self, h: int) -> dict[str, Any]:
        return {"action_mask": np.array(self._masks[h], dtype=np.int8), "arrived": self._arrived[h],
                "deadlocked": bool(self._deadlocks.deadlocked[h])}

    # -- rendering -----------------------------------------------------------------------------------

    def render(self) -> np.ndarray | None:
        """With render_mode "rgb_array": the rail grey, each train a coloured square (dark grey when
        deadlocked) and its target a ring of its colour, 12 pixels a cell; undeparted and arrived trains
        are not drawn."""
        if self.render_mode is None:
            gymnasium.logger.warn("FlatlandParallelEnv.render() without a render_mode: pass render_mode='rgb_array'")
            return None
        if self._rail_env is None:
            raise RuntimeError("FlatlandParallelEnv.render before reset()")
        return render_rail(self._tables, self._trains, self._targets, self._deadlocks.deadlocked)

    def close(self) -> None:
        _clear_instance_caches(self._rail_env)
        self._rail_env = None
        self.agents = []


def _clear_instance_caches(env: Any) -> None:
    """Empty flatland's lru_caches of RailEnv and rail methods: they are keyed by the instance, so every
    episode's env (with its malfunction generator's million cached random numbers) and rail would stay
    alive: about 5 MB more per episode, 2 GB after 300 episodes of 5_agents. Costs other flatland envs in
    this process only cache misses."""
    if env is None:
        return
    for klass in (*type(env).__mro__, *type(env.rail).__mro__):
        for member in vars(klass).values():
            clear = getattr(member, "cache_clear", None)
            if clear is not None:
                clear()


def _move_action(direction: int, move: int) -> int:
    """flatland's action that leaves a cell facing `direction` towards `move` (back: forward at a dead end)."""
    return {3: _MOVE_LEFT, 0: _MOVE_FORWARD, 1: _MOVE_RIGHT, 2: _MOVE_FORWARD}[(move - direction) % 4]


def render_rail(tables: RailTables, trains: Trains, targets: list[tuple[int, int]], deadlocked: list[bool],
                cell: int = 12) -> np.ndarray:
    image = np.empty((tables.height * cell, tables.width * cell, 3), dtype=np.uint8)
    image[:] = _COLOURS["background"]
    half, width = cell // 2, max(cell // 6, 1)
    for r in range(tables.height):
        for c in range(tables.width):
            sides = {nd for d in range(4) for nd in range(4) if tables.exits[r][c][d][nd]}
            top, left = r * cell, c * cell
            for side in sides:  # a bar from the cell's centre to each side the rail leaves by
                rows = (slice(top, top + half + width) if side == 0 else slice(top + half - width, top + cell)
                        if side == 2 else slice(top + half - width, top + half + width))
                cols = (slice(left + half - width, left + cell) if side == 1 else slice(left, left + half + width)
                        if side == 3 else slice(left + half - width, left + half + width))
                image[rows, cols] = _COLOURS["rail"]
    for h, (r, c) in enumerate(targets):
        colour = _TRAIN_COLOURS[h % len(_TRAIN_COLOURS)]
        block = image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
        block[:2], block[-2:], block[:, :2], block[:, -2:] = colour, colour, colour, colour
    for h, where in enumerate(trains.where):
        if where != ON_MAP:
            continue
        r, c = trains.position[h]
        colour = _COLOURS["deadlocked"] if deadlocked[h] else _TRAIN_COLOURS[h % len(_TRAIN_COLOURS)]
        image[r * cell + 2:(r + 1) * cell - 2, c * cell + 2:(c + 1) * cell - 2] = colour
    return image


register_world("flatland", make_flatland)
