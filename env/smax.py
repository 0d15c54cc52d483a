"""SMAX (jaxmarl's JAX re-implementation of SMAC battles) as a coupled world: a PettingZoo ParallelEnv.

`make_smax(n_agents, episode_length, scenario="3m")` builds one copy of a battle; every rank holds one
(env/coupled.py). The allies ``ally_0 .. ally_{n-1}`` are the agents, one per rank; the enemies play
jaxmarl's heuristic (`HeuristicEnemySMAX`). The copy promises:

  * Determinism: `reset(seed=s)` makes the episode a pure function of s (the JAX PRNG key is derived
    from s), so the same seed and the same joint actions give bit-identical observations, rewards,
    masks and dones on every copy, in any process (on CPUs of the same kind: XLA compiles for the host).
  * Observations: SMAX's "unit_list" observation, float32 in the Box [-1, 1] (3m: 75 floats, 2s3z: 127;
    clipped, as a unit pushed past the wall by a collision is off the map for one step before it dies).
  * Actions (Discrete(5 + n_enemies)): 0-3 move north/east/south/west, 4 stop, 5 + j attack enemy j.
    `infos[agent]["action_mask"]` (np.int8, 1 = available) is in the infos of `reset()` and of every
    `step()`: stop is always available; moves while alive; attacks on living enemies in weapon range.
    A dead unit's only action is stop. An unavailable action is executed as SMAX does it: an attack on
    an enemy out of range or dead does nothing (the unit stands still).
  * Rewards: every agent gets SMAX's shared team reward: the enemies' health lost this step (as a share
    of their full health, summed and divided by the enemy count) plus 1 for a win.
  * Ends: an ally that dies is reported with `terminations[agent] = True` in that step and leaves
    `agents`; a battle that ends (every unit of one side dead) terminates every remaining agent; the time
    limit truncates every remaining agent (`truncations = True`, `terminations = False`). Then `agents`
    is empty, and `episode_metrics()` says `{"win": 1.0 or 0.0}`.
  * Win: every enemy dead and at least one ally alive (SMAX can end in a draw: both sides dead in the
    same step, which is not a win, as in SMAX's reward).
  * Time limit: `episode_length` steps (each is 8 SMAX world steps of 1/16 s, as SMAC's step_mul = 8);
    `episode_length = 0` takes SMAC's limit of the scenario from `SMAC_TIME_LIMITS` (3m: 60, 2s3z: 120).
    (SMAX's own dones["__all__"] comes one step late, after max_steps + 1 steps; it is not used.)
  * `reference_actions(observations)`: jaxmarl's heuristic policy ("closest" target) for the allies,
    computed with every step so it is a function of the seed and the steps taken only.

Scenarios: jaxmarl's maps (3m, 2s3z, 25m, 3s5z, 8m, 5m_vs_6m, 10m_vs_11m, 27m_vs_30m, 3s5z_vs_3s6z,
3s_vs_5z, 6h_vs_8z, smacv2_5_units, smacv2_10_units, smacv2_20_units), SMAC maps added here (3s_vs_3z,
3s_vs_4z, 2m_vs_1z, 8m_vs_9m; SMAX has no shields, so protoss units are weaker than in SMAC), and
"Nm" (N marines against N marines) and "Nm_vs_Km" for any N, K >= 1, e.g. "2m" and "4m" for jobs of 2
and 4 ranks.

Speed: one jitted program per step (SMAX's step, the enemies' heuristic, observations, masks, reward,
dones, win flag and the reference policy), compiled once per process and world and fetched with one
`jax.device_get`. JAX runs on the CPU unless JAX_PLATFORMS is set before jax is first imported
(bit-identical copies are tested on the CPU only).
Compiled programs go to JAX's persistent compilation cache, so later processes skip most of the
compile: in $ODMAR_MPI_JAX_CACHE if set (empty: no cache), else $XDG_CACHE_HOME/odmar_mpi/jax or
~/.cache/odmar_mpi/jax, in a subfolder per CPU kind (the cache key does not name the host CPU, and a
program compiled for another CPU's instruction set must not be loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

from env.coupled import MissingWorldPackage, register_world

INSTALL_HINT = "pip install -e '.[smax]'"
STOP = 4  # the stop action; also what a dead unit does
N_MOVEMENT_ACTIONS = 5  # 4 moves and stop; attacks follow

# SMAC's time limits in steps (oxwhirl/smac, smac/env/starcraft2/maps/smac_maps.py), for episode_length = 0.
SMAC_TIME_LIMITS: dict[str, int] = {
    "3m": 60, "8m": 120, "25m": 150, "5m_vs_6m": 70, "8m_vs_9m": 120, "10m_vs_11m": 150, "27m_vs_30m": 180,
    "MMM": 150, "MMM2": 180, "2s3z": 120, "3s5z": 150, "3s5z_vs_3s6z": 170, "3s_vs_3z": 150, "3s_vs_4z": 200,
    "3s_vs_5z": 250, "2m_vs_1z": 150, "corridor": 400, "6h_vs_8z": 150, "2s_vs_1sc": 300,
    "so_many_baneling": 100, "bane_vs_bane": 200, "2c_vs_64zg": 400,
}

# SMAC maps SMAX cannot build, and why.
UNSUPPORTED_SCENARIOS: dict[str, str] = {
    "2s_vs_1sc": "SMAX has no spine crawler",
    "corridor": "SMAX has no terrain (corridor's walls and ramps)",
    "MMM": "SMAX has no medivacs (healing)",
    "MMM2": "SMAX has no medivacs (healing)",
    "1c3s5z": "SMAX has no colossus",
    "2c_vs_64zg": "SMAX has no colossus",
    "bane_vs_bane": "SMAX has no banelings",
    "so_many_baneling": "SMAX has no banelings",
}

# SMAX unit types: 0 marine, 1 marauder, 2 stalker, 3 zealot, 4 zergling, 5 hydralisk.
# Allies first, then enemies, as jaxmarl's Scenario.unit_types.
_EXTRA_SCENARIOS: dict[str, tuple[list[int], int, int]] = {
    "3s_vs_3z": ([2] * 3 + [3] * 3, 3, 3),
    "3s_vs_4z": ([2] * 3 + [3] * 4, 3, 4),
    "2m_vs_1z": ([0] * 2 + [3], 2, 1),
    "8m_vs_9m": ([0] * 17, 8, 9),
}
_MARINES = re.compile(r"(\d+)m(?:_vs_(\d+)m)?")
# Options that would break the interface this module promises (Discrete actions, unit_list observations
# read by the reference policy, the time limit and the scenario named by their own arguments).
_FIXED_OPTIONS = ("action_type", "observation_type", "max_steps", "num_allies", "num_enemies", "scenario")

_COLOURS = {"ally": (40, 110, 235), "enemy": (220, 50, 40), "dead": (150, 150, 150), "shot": (90, 90, 90),
            "health": (40, 190, 60), "lost": (200, 200, 200), "background": (250, 250, 245)}


def _import_jax() -> Any:
    """jax on the CPU unless the user chose (JAX_PLATFORMS), with the persistent compilation cache."""
    if "jax" not in sys.modules:
        # Effective only before jax's first import; a rank with a GPU may set JAX_PLATFORMS itself.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    _configure_cache(jax)
    return jax


def cache_dir() -> Path | None:
    """The persistent compilation cache folder of this host's CPU kind (None: caching off)."""
    root = os.environ.get("ODMAR_MPI_JAX_CACHE")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "odmar_mpi", "jax")
    if not root:
        return None
    return Path(root) / _cpu_kind()


def _cpu_kind() -> str:
    # XLA:CPU compiles for the host's instruction set, which JAX's cache key leaves out.
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    import platform

    identity = "\n".join(sorted(set(lines))) or platform.processor() + platform.machine()
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


_cache_configured = False


def _configure_cache(jax: Any) -> None:
    global _cache_configured
    if _cache_configured:
        return
    _cache_configured = True
    if jax.config.jax_compilation_cache_dir:  # the user's own cache wins
        return
    folder = cache_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program: SMAX's are small but take seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    with contextlib.suppress(ImportError):
        import filelock  # noqa: F401

        # A size limit turns on JAX's file lock, so ranks starting together never read a half-written entry.
        jax.config.update("jax_compilation_cache_max_size", 2 ** 31)


def _import_smax() -> Any:
    """jaxmarl's SMAX package, or MissingWorldPackage naming the install command."""
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    try:
        _import_jax()
        # On import jaxmarl sets sys.stdout/stderr to sys.__stdout__/__stderr__ (undoing any redirection, e.g.
        # pytest's) and then prints a line about optional environments: swallow the line, restore the streams.
        sys.stdout = sys.__stdout__ = io.StringIO()
        sys.__stderr__ = sys.stderr
        import jaxmarl.environments.smax as smax
    except ImportError as error:
        raise MissingWorldPackage(f"world 'smax' needs the package jaxmarl (with jax), which is not installed: "
                                  f"{INSTALL_HINT}") from error
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved
    return smax


def known_scenarios() -> list[str]:
    """The scenario names SMAX builds here, besides "Nm" and "Nm_vs_Km" (any N, K >= 1)."""
    smax = _import_smax()
    return sorted(set(smax.smax_env.MAP_NAME_TO_SCENARIO) | set(_EXTRA_SCENARIOS))


def scenario_size(scenario: str) -> tuple[int, int]:
    """(allies, enemies) of `scenario`; ValueError for a name SMAX cannot build."""
    built = _scenario(scenario)
    return int(built.num_allies), int(built.num_enemies)


def _scenario(name: str) -> Any:
    smax = _import_smax()
    import jax.numpy as jnp

    if name in smax.smax_env.MAP_NAME_TO_SCENARIO:
        return smax.map_name_to_scenario(name)
    if name in _EXTRA_SCENARIOS:
        types, allies, enemies = _EXTRA_SCENARIOS[name]
    elif (match := _MARINES.fullmatch(name)) and int(match[1]) >= 1 and int(match[2] or match[1]) >= 1:
        allies, enemies = int(match[1]), int(match[2] or match[1])
        types = [0] * (allies + enemies)
    else:
        why = f" ({UNSUPPORTED_SCENARIOS[name]})" if name in UNSUPPORTED_SCENARIOS else ""
        raise ValueError(f"env.scenario = {name!r} is not a scenario SMAX can build{why}; known scenarios: "
                         f"{known_scenarios()}, and 'Nm' / 'Nm_vs_Km' (N marines against N or K marines) for any "
                         f"N, K >= 1; SMAX cannot build {sorted(UNSUPPORTED_SCENARIOS)}")
    return smax.Scenario(jnp.array(types, dtype=jnp.uint8), allies, enemies, False, False)


class _Out(NamedTuple):
    """What one reset or step hands back to Python, fetched with one `jax.device_get`."""

    obs: Any  # (n, obs_dim) float32
    masks: Any  # (n, n_actions) int8
    reward: Any  # () float32, the team reward
    alive: Any  # (n,) bool, allies alive
    battle_over: Any  # () bool: every unit of one side dead
    done: Any  # () bool: battle over or time limit reached
    won: Any  # () bool: every enemy dead and an ally alive
    reference: Any  # (n,) int32, the heuristic's actions at the new state (always available)


class _Carry(NamedTuple):
    """The episode between steps, kept as jax arrays."""

    world: Any  # HeuristicEnemySMAX state (SMAX state and the enemies' heuristic state)
    policy: Any  # the allies' heuristic state (the reference policy's memory)
    key: Any  # (2,) uint32, the episode's key; step t uses fold_in(key, t)


class _Core:
    """The compiled reset and step of one world (scenario, time limit, options), shared by a process's copies."""

    def __init__(self, scenario: Any, episode_length: int, options: dict[str, Any]) -> None:
        smax = _import_smax()
        jax = _import_jax()
        import jax.numpy as jnp
        from jaxmarl.environments.smax.heuristic_enemy import (create_heuristic_policy,
                                                               get_heuristic_policy_initial_state)

        self.env = smax.HeuristicEnemySMAX(scenario=scenario, max_steps=episode_length, **options)
        self.n_allies = int(self.env.num_allies)
        self.n_enemies = int(self.env.num_enemies)
        self.n_actions = N_MOVEMENT_ACTIONS + self.n_enemies
        self.obs_dim = int(self.env.obs_size)
        self.allies = [f"ally_{i}" for i in range(self.n_allies)]
        heuristic = create_heuristic_policy(self.env, 0, shoot=True, attack_mode="closest")
        initial_policy = jax.tree.map(lambda *xs: jnp.stack(xs),
                                      *[get_heuristic_policy_initial_state()] * self.n_allies)
        n, env = self.n_allies, self.env

        def strong(tree: Any) -> Any:
            # Weakly typed leaves (e.g. SMAX's step counter) would make the next call's types differ.
            return jax.tree.map(lambda x: jnp.asarray(x).astype(jnp.asarray(x).dtype), tree)

        def finish(world: Any, policy: Any, key: Any, obs: dict, reward: Any) -> tuple[_Carry, _Out]:
            state = world.state
            obs = jnp.stack([obs[agent] for agent in self.allies]).astype(jnp.float32)
            masks = env.get_avail_actions(world)
            masks = jnp.stack([masks[agent] for agent in self.allies]).astype(jnp.int8)
            alive, enemies_alive = state.unit_alive[:n], state.unit_alive[n:]
            won = ~jnp.any(enemies_alive) & jnp.any(alive)
            battle_over = ~jnp.any(enemies_alive) | ~jnp.any(alive)
            # The reference policy sees the allies' observations of the new state; its key is the step's.
            policy_keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, state.step), 1), n)
            reference, policy = jax.vmap(heuristic)(policy_keys, policy, obs)
            reference = reference.astype(jnp.int32)
            available = jnp.take_along_axis(masks, reference[:, None], axis=1)[:, 0] == 1
            reference = jnp.where(available & alive, reference, STOP)
            # Not SMAX's dones["__all__"]: it tests the time limit before counting the step, so its
            # episodes last max_steps + 1 steps; SMAC's last episode_limit steps.
            done = battle_over | (state.step >= episode_length)
            # A collision can push a unit past the wall (which kills it next step): keep obs in the Box.
            out = _Out(jnp.clip(obs, -1.0, 1.0), masks, jnp.asarray(reward, jnp.float32), alive, battle_over,
                       done, won, reference)
            return strong(_Carry(world, policy, key)), strong(out)

        def reset(key: Any) -> tuple[_Carry, _Out]:
            obs, world = env.reset(jax.random.fold_in(key, 2 ** 31 - 1))
            return finish(world, initial_policy, key, obs, 0.0)

        def step(carry: _Carry, actions: Any) -> tuple[_Carry, _Out]:
            world = carry.world
            alive = world.state.unit_alive[:n]
            actions = jnp.where(alive, actions, STOP)  # dead units stop (SMAX ignores their actions anyway)
            step_key = jax.random.fold_in(jax.random.fold_in(carry.key, world.state.step), 0)
            joint = {agent: actions[i] for i, agent in enumerate(self.allies)}
            obs, world, rewards, _, _ = env.step_env(step_key, world, joint)
            return finish(world, carry.policy, carry.key, obs, rewards[self.allies[0]])

        key_spec = jax.ShapeDtypeStruct((2,), jnp.uint32)
        start = time.perf_counter()
        lowered = jax.jit(reset).lower(key_spec)
        self._reset = lowered.compile()
        self.reset_compile_s = time.perf_counter() - start
        carry_spec = lowered.out_info[0]
        start = time.perf_counter()
        self._step = jax.jit(step).lower(carry_spec, jax.ShapeDtypeStruct((n,), jnp.int32)).compile()
        self.step_compile_s = time.perf_counter() - start
        self._device_get = jax.device_get

    def reset(self, key_data: np.ndarray) -> tuple[_Carry, _Out]:
        carry, out = self._reset(key_data)
        return carry, self._device_get(out)

    def step(self, carry: _Carry, actions: np.ndarray) -> tuple[_Carry, _Out]:
        carry, out = self._step(carry, actions)
        return carry, self._device_get(out)


_CORES: dict[Any, _Core] = {}


def _core(scenario_name: str, scenario: Any, episode_length: int, options: dict[str, Any]) -> _Core:
    try:
        key = (scenario_name, episode_length, tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # unhashable options (e.g. arrays): a core of its own
        return _Core(scenario, episode_length, options)
    if key not in _CORES:
        _CORES[key] = _Core(scenario, episode_length, options)
    return _CORES[key]


def make_smax(n_agents: int, episode_length: int, *, scenario: str = "3m", **options: Any) -> SMAXParallelEnv:
    """The coupled-world factory: a copy of the SMAX battle `scenario` with `n_agents` allies (one per rank),
    truncated after `episode_length` steps (0: SMAC's limit of the scenario, `SMAC_TIME_LIMITS`).

    `options`: render_mode (None or "rgb_array"), and keyword arguments of jaxmarl's HeuristicEnemySMAX
    (e.g. enemy_shoots, attack_mode of the enemies, won_battle_bonus, see_enemy_actions)."""
    built, episode_length = check_smax(n_agents, episode_length, scenario=scenario, **options)
    render_mode = options.pop("render_mode", None)
    return SMAXParallelEnv(scenario, _core(scenario, built, episode_length, options), episode_length, render_mode)


def check_smax(n_agents: int, episode_length: int, *, scenario: str = "3m", **options: Any) -> tuple[Any, int]:
    """What `make_smax` refuses, found without compiling anything: ValueError naming the problem and the fix (a
    scenario SMAX cannot build, an ally count other than the rank count, options it does not take), or
    MissingWorldPackage. Returns the scenario and the time limit."""
    built = _scenario(scenario)
    allies = int(built.num_allies)
    if n_agents != allies:
        raise ValueError(f"env.scenario = {scenario!r} has {allies} allies but the job has {n_agents} ranks "
                         f"(one rank per agent): launch mpirun -n {allies}")
    if episode_length == 0:
        if scenario not in SMAC_TIME_LIMITS:
            raise ValueError(f"episode_length = 0 asks for SMAC's time limit, but SMAC has none for {scenario!r} "
                             f"(known: {sorted(SMAC_TIME_LIMITS)}): set episode_length > 0")
        episode_length = SMAC_TIME_LIMITS[scenario]
    if episode_length < 1:
        raise ValueError(f"episode_length = {episode_length}: must be >= 1 (or 0 for SMAC's limit)")
    fixed = sorted(set(options) & set(_FIXED_OPTIONS))
    if fixed:
        raise ValueError(f"SMAX options {fixed} cannot be set here: the world has Discrete actions, unit_list "
                         "observations, and takes its scenario and time limit from scenario and episode_length")
    return built, episode_length


class SMAXParallelEnv(ParallelEnv):
    """One copy of a SMAX battle: the allies are the agents (see the module docstring for the promises)."""

    metadata = {"name": "smax_v0", "render_modes": ["rgb_array"], "render_fps": 2, "is_parallelizable": True}
    metric_keys = ("win",)  # what episode_metrics() gives
    action_masks = True  # infos carry action_mask

    def __init__(self, scenario: str, core: _Core, episode_length: int, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode = {render_mode!r}: must be None or one of {self.metadata['render_modes']}")
        self.scenario = scenario
        self.episode_length = episode_length
        self.render_mode = render_mode
        self._core = core
        self.n_enemies = core.n_enemies
        self.possible_agents = list(core.allies)
        self.agents: list[str] = []
        # One space object per agent: PettingZoo seeds and compares them by identity.
        self.observation_spaces = {agent: gymnasium.spaces.Box(-1.0, 1.0, (core.obs_dim,), np.float32)
                                   for agent in self.possible_agents}
        self.action_spaces = {agent: gymnasium.spaces.Discrete(core.n_actions) for agent in self.possible_agents}
        self._index = {agent: i for i, agent in enumerate(self.possible_agents)}
        self._carry: _Carry | None = None
        self._out: _Out | None = None
        self._ended = False

    @property
    def compile_seconds(self) -> dict[str, float]:
        """How long this process took to build reset and step (trace, compile or load from the cache)."""
        return {"reset": self._core.reset_compile_s, "step": self._core.step_compile_s}

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None,
              options: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Start an episode, a pure function of `seed` (None: a fresh seed from the OS); options are unused."""
        if seed is not None and int(seed) < 0:
            raise ValueError(f"seed = {seed}: must be >= 0")
        key_data = np.random.SeedSequence(None if seed is None else int(seed)).generate_state(2, np.uint32)
        self._carry, out = self._core.reset(key_data)
        self._out, self._ended = out, False
        self.agents = list(self.possible_agents)
        observations = {agent: np.array(out.obs[i]) for i, agent in enumerate(self.agents)}
        infos = {agent: {"action_mask": np.array(out.masks[i])} for i, agent in enumerate(self.agents)}
        return observations, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Step every agent in `agents` with its action (an entry for an agent that has left is ignored)."""
        if self._carry is None or not self.agents:
            raise RuntimeError("SMAXParallelEnv.step without a running episode: call reset() first")
        unknown = set(actions) - set(self.possible_agents)
        missing = [agent for agent in self.agents if agent not in actions]
        if unknown or missing:
            raise ValueError(f"actions: {sorted(unknown)} are not agents of this world and {missing} have no "
                             f"action; give one action for each of {self.agents}")
        joint = np.full(len(self.possible_agents), STOP, np.int32)
        n_actions = self._core.n_actions
        for agent in self.agents:
            action = int(actions[agent])
            if not 0 <= action < n_actions:
                raise ValueError(f"action {action} of {agent}: must be in [0, {n_actions - 1}]")
            joint[self._index[agent]] = action
        self._carry, out = self._core.step(self._carry, joint)
        self._out = out
        reward = float(out.reward)
        time_up = bool(out.done) and not bool(out.battle_over)
        observations, rewards, terminations, truncations, infos = {}, {}, {}, {}, {}
        for agent in self.agents:
            i = self._index[agent]
            observations[agent] = np.array(out.obs[i])
            rewards[agent] = reward
            dead = not out.alive[i]
            terminations[agent] = dead or bool(out.battle_over)
            truncations[agent] = time_up and not dead
            infos[agent] = {"action_mask": np.array(out.masks[i])}
            if out.done:
                infos[agent]["won"] = bool(out.won)
        if out.done:
            self.agents = []
            self._ended = True
        else:
            self.agents = [agent for agent in self.agents if out.alive[self._index[agent]]]
        return observations, rewards, terminations, truncations, infos

    def episode_metrics(self) -> dict[str, float]:
        """{"win": 1.0 if every enemy died and an ally lived, else 0.0}, once the episode has ended."""
        if not self._ended or self._out is None:
            raise RuntimeError("episode_metrics() before the episode ended: step until env.agents is empty")
        return {"win": float(self._out.won)}

    def reference_actions(self, observations: dict[str, np.ndarray] | None = None) -> dict[str, int]:
        """jaxmarl's heuristic ("closest" target) for every agent in `agents`, at the current state.

        Computed inside every reset and step from the state (the observations are the ones the env
        returned, so the argument is not read): deterministic given the seed and the steps taken, and
        always an available action."""
        if self._out is None:
            raise RuntimeError("SMAXParallelEnv.reference_actions before reset()")
        return {agent: int(self._out.reference[self._index[agent]]) for agent in self.agents}

    def render(self) -> np.ndarray | None:
        """With render_mode "rgb_array": the battle as an (H, W, 3) uint8 image, drawn with numpy: allies
        blue, enemies red (dead units small grey dots), a health bar above each unit, a grey line from
        each unit that chose to attack in the last step to its target, a grey frame at the map's edge."""
        if self.render_mode is None:
            gymnasium.logger.warn("SMAXParallelEnv.render() without a render_mode: pass render_mode='rgb_array'")
            return None
        if self._carry is None:
            raise RuntimeError("SMAXParallelEnv.render before reset()")
        state = self._core._device_get(self._carry.world.state)
        env = self._core.env
        return render_battle(np.asarray(state.unit_positions), np.asarray(state.unit_health),
                             np.asarray(env.unit_type_health)[np.asarray(state.unit_types)],
                             np.asarray(state.unit_alive), np.asarray(state.prev_attack_actions),
                             np.asarray(env.unit_type_radiuses)[np.asarray(state.unit_types)],
                             len(self.possible_agents), (float(env.map_width), float(env.map_height)))

    def close(self) -> None:
        self._carry = None
        self.agents = []


def render_battle(positions: np.ndarray, health: np.ndarray, max_health: np.ndarray, alive: np.ndarray,
                  attacks: np.ndarray, radii: np.ndarray, n_allies: int, size: tuple[float, float],
                  pixels: int = 384) -> np.ndarray:
    """Draw units (allies first) on a (pixels, pixels, 3) uint8 image; y points up as in SMAX."""
    image = np.empty((pixels, pixels, 3), np.uint8)
    image[:] = _COLOURS["background"]
    image[[0, -1], :] = image[:, [0, -1]] = _COLOURS["dead"]  # the map's edge (walls kill)
    scale = pixels / max(size)
    ys, xs = np.mgrid[0:pixels, 0:pixels]

    def to_pixel(point: np.ndarray) -> tuple[float, float]:
        return point[0] * scale, pixels - 1 - point[1] * scale

    n_units = len(positions)
    for i in range(n_units):  # shots first, so units are drawn over them
        if not alive[i] or attacks[i] < N_MOVEMENT_ACTIONS:
            continue
        target = attacks[i] - N_MOVEMENT_ACTIONS  # enemies count their targets from the last ally down
        j = n_allies + target if i < n_allies else n_allies - 1 - target
        if 0 <= j < n_units and alive[j]:
            (x0, y0), (x1, y1) = to_pixel(positions[i]), to_pixel(positions[j])
            t = np.linspace(0.0, 1.0, int(np.hypot(x1 - x0, y1 - y0)) + 2)
            cols = np.clip(np.round(x0 + t * (x1 - x0)).astype(int), 0, pixels - 1)
            rows = np.clip(np.round(y0 + t * (y1 - y0)).astype(int), 0, pixels - 1)
            image[rows, cols] = _COLOURS["shot"]
    for i in range(n_units):
        x, y = to_pixel(positions[i])
        radius = max(radii[i] * scale, 3.0) if alive[i] else 2.0
        colour = _COLOURS["dead"] if not alive[i] else _COLOURS["ally" if i < n_allies else "enemy"]
        image[(xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2] = colour
        if alive[i]:  # health bar above the unit
            width = max(int(2 * radius), 8)
            top, left = int(y - radius) - 5, int(x - width / 2)
            filled = int(round(width * float(health[i]) / float(max_health[i])))
            rows = slice(max(top, 0), max(top + 3, 0))
            image[rows, max(left, 0):max(left + width, 0)] = _COLOURS["lost"]
            image[rows, max(left, 0):max(left + filled, 0)] = _COLOURS["health"]
    return image


register_world("smax", make_smax)
