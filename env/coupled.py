"""Coupled worlds: one rank's own copy of a world in which all agents step jointly (docs/architecture.md, "MAMBA").

MPE, SMAC and Flatland step all agents at once, so no rank can step "its" agent alone. Every rank
therefore holds a full copy of the world: every copy is built with the same seed, every copy is reset
with the same per-episode seed and stepped with the same joint action (which the ranks exchange each
step), so all copies stay identical. A rank's learner reads only its own agent's observation and
reward; `team_reward` is for reports.

Any PettingZoo `ParallelEnv` plugs in: register a factory that builds it from the agent count, the
episode length and world options, then name it in `make_coupled_env`::

    register_world("my_world", lambda n_agents, episode_length, **options: MyParallelEnv(...))
    world = CoupledWorld(make_coupled_env("my_world", 5, 25), agent_index=rank, seed=seed)

The world must be deterministic given its reset seed and the joint actions (simple_spread is): that is
what keeps the copies identical and lets `load_state_dict` replay an episode bit for bit.

Beyond PettingZoo's API a world may offer, and the copy then uses:
  * `infos[agent]["action_mask"]` (int8 (n_actions,), 1 = available) in the infos of reset and step, declared
    by `action_masks = True` on the world;
  * agents that leave the episode early (PettingZoo's rule: terminated or truncated, then gone from `agents`);
  * `episode_metrics()` -> {"win": ...} or {"arrival": ...} once the episode has ended, the keys declared in
    the world's `metric_keys` (`METRICS` names their means);
  * `reference_actions(observations)` -> {agent: action}: a reference policy for the agents still in the
    episode (simple_spread: agent k steers to landmark k; SMAX: jaxmarl's heuristic; Flatland: shortest paths),
    deterministic given the episode's seed and the steps taken.
`CoupledWorld.play` plays a whole episode of the team locally (every agent's action chosen by one function,
e.g. uniformly random allowed actions or the reference policy): no other rank is needed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Any, Callable

import numpy as np

WorldFactory = Callable[..., Any]
METRICS = {"win": "win_rate", "arrival": "arrival_rate"}
"""A world's episode metric -> the name records and reports give its mean over episodes."""
SPREAD_LENGTH = 25  # MAMBA's (and MPE's) simple_spread episodes


class MissingWorldPackage(ImportError):
    """The package that provides a registered world is not installed (the message says how to install it)."""


def _simple_spread(n_agents: int, episode_length: int, **options: Any) -> Any:
    """MPE's cooperative navigation with discrete actions and half-local rewards (MAMBA's MPE setting), with the
    reference policy agent k steers to landmark k; episode_length 0 = 25 steps."""
    try:
        from mpe2 import simple_spread_v3
        from pettingzoo.utils.wrappers import BaseParallelWrapper
    except ImportError as error:
        raise MissingWorldPackage("world 'simple_spread' needs the package mpe2 (the PettingZoo MPE successor), "
                                  "which is not installed: pip install mpe2") from error

    class SpreadWithReference(BaseParallelWrapper):
        """simple_spread with `reference_actions`: a hand-made policy to measure learning against."""

        def reference_actions(self, observations: dict[str, np.ndarray]) -> dict[str, int]:
            return {agent: steer_to_landmark(k, observations[agent]) for k, agent in enumerate(self.possible_agents)
                    if agent in self.agents}

    settings = {"continuous_actions": False, "local_ratio": 0.5, **options}
    return SpreadWithReference(simple_spread_v3.parallel_env(N=n_agents, max_cycles=episode_length or SPREAD_LENGTH,
                                                             **settings))


NOOP, LEFT, RIGHT, DOWN, UP = range(5)  # mpe2's discrete actions


def steer_to_landmark(agent: int, obs: np.ndarray) -> int:
    """simple_spread's reference policy for agent k: steer to landmark k along the larger axis of (landmark -
    0.6 velocity), a crude brake. Observation: own velocity (2), own position (2), every landmark relative to
    the agent (2 each), ..."""
    velocity, landmark = obs[0:2], obs[4 + 2 * agent:6 + 2 * agent]
    direction = landmark - 0.6 * velocity
    if np.abs(direction).max() < 0.05:
        return NOOP
    if abs(direction[0]) > abs(direction[1]):
        return RIGHT if direction[0] > 0 else LEFT
    return UP if direction[1] > 0 else DOWN


def _smax(n_agents: int, episode_length: int, **options: Any) -> Any:
    from env.smax import make_smax  # imports jax only when a run asks for the world

    return make_smax(n_agents, episode_length, **options)


def _flatland(n_agents: int, episode_length: int, **options: Any) -> Any:
    from env.flatland import make_flatland

    return make_flatland(n_agents, episode_length, **options)


def _check_smax(n_agents: int, episode_length: int, **options: Any) -> None:
    from env.smax import check_smax

    check_smax(n_agents, episode_length, **options)


def _check_flatland(n_agents: int, episode_length: int, **options: Any) -> None:
    from env.flatland import check_flatland

    check_flatland(n_agents, episode_length, **options)


WORLDS: dict[str, WorldFactory] = {"simple_spread": _simple_spread, "smax": _smax, "flatland": _flatland}
# Worlds that can say what is wrong with their arguments without being built (SMAX compiles for seconds).
CHECKS: dict[str, WorldFactory] = {"smax": _check_smax, "flatland": _check_flatland}


def register_world(name: str, factory: WorldFactory) -> None:
    """Make `make_coupled_env(name, n_agents, episode_length, **options)` call `factory` with those arguments;
    the factory returns a PettingZoo ParallelEnv whose `possible_agents` has `n_agents` entries."""
    WORLDS[name] = factory


def import_world(name: str) -> WorldFactory:
    """The factory of `name`: a registered world, or "package.module:factory" (any importable callable that
    returns a PettingZoo ParallelEnv; it gets those of n_agents, episode_length and the world's options that its
    signature takes), which is registered under that name. ValueError naming the import error or the missing
    attribute, and the fix."""
    if name in WORLDS:
        return WORLDS[name]
    if ":" not in name:
        raise ValueError(f"env.world = {name!r} is not a known world ({', '.join(sorted(WORLDS))}) nor a factory of "
                         "your own, written package.module:function (importable, e.g. from PYTHONPATH)")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing
        raise ValueError(f"env.world = {name!r}: cannot import {module_name} ({type(error).__name__}: {error}); "
                         "make the module importable (install it, or add its folder to PYTHONPATH)") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"env.world = {name!r}: module {module_name} ({module.__file__}) has no function "
                         f"{attribute!r}; name a function that returns a PettingZoo ParallelEnv")

    def call(n_agents: int, episode_length: int, **options: Any) -> Any:
        offered = {"n_agents": n_agents, "episode_length": episode_length, **options}
        accepted = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        return factory(**{key: value for key, value in offered.items() if takes_all or key in accepted})

    register_world(name, call)
    return call


def check_world(name: str, n_agents: int, episode_length: int, **options: Any) -> None:
    """ValueError (or MissingWorldPackage) naming what is wrong with world `name` for a job of `n_agents` ranks:
    unknown world or scenario, an agent count other than the rank count (saying which mpirun -n), actions that
    are not Discrete; built once unless the world can tell without (CHECKS)."""
    import_world(name)
    if name in CHECKS:
        CHECKS[name](n_agents, episode_length, **options)
        return
    env = make_coupled_env(name, n_agents, episode_length, **options)
    if not hasattr(env, "possible_agents") or not callable(getattr(env, "action_space", None)):
        raise ValueError(f"env.world = {name!r} built a {type(env).__name__}, not a PettingZoo ParallelEnv (it needs "
                         "possible_agents, observation_space(agent), action_space(agent), reset and step)")
    agents = len(env.possible_agents)
    if agents != n_agents:
        raise ValueError(f"env.world = {name!r} has {agents} agents but the job has {n_agents} ranks (one rank per "
                         f"agent): launch mpirun -n {agents}")
    space = env.action_space(env.possible_agents[0])
    if not hasattr(space, "n"):
        raise ValueError(f"env.world = {name!r}: the agents' action space is {space}; MAMBA and IPPO act in Discrete "
                         "spaces (a world with continuous actions would need a learner for them)")
    env.close()


def make_coupled_env(name: str, n_agents: int, episode_length: int, **options: Any) -> Any:
    """A fresh ParallelEnv of the world `name` (registered, or "package.module:factory": `import_world`) with
    `n_agents` agents, truncated after `episode_length` steps (0: the world's own limit); `options` go to the
    world's factory (e.g. local_ratio for simple_spread, scenario for SMAX and Flatland)."""
    factory = import_world(name)
    if n_agents < 1 or episode_length < 0:
        raise ValueError(f"world {name!r}: n_agents = {n_agents} must be >= 1 and episode_length = "
                         f"{episode_length} >= 0 (0: the world's own limit)")
    return factory(n_agents, episode_length, **options)


def random_action(rng: np.random.Generator, n_actions: int, available: np.ndarray | None) -> int:
    """A uniformly random action among the `available` ones (a mask, 1 = available; None: all n_actions)."""
    if available is None:
        return int(rng.integers(n_actions))
    return int(rng.choice(np.flatnonzero(available)))


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` (0, 1, ...) of a run seeded `seed`: the same on every rank."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class CoupledWorld:
    """Rank `agent_index`'s copy of a jointly stepped ParallelEnv.

    `reset()` starts episode k (k = 0, 1, ... counted by this copy) with the seed `episode_seed(seed, k)`;
    `step(joint_actions)` steps every agent still in the world with its entry of the joint action.
    The copy records the joint actions since the last reset, so `state_dict()` is a few numbers and
    `load_state_dict()` rebuilds the exact world by replaying them.
    """

    def __init__(self, env: Any, agent_index: int, seed: int) -> None:
        self.env = env
        self.agents = list(env.possible_agents)
        self.n_agents = len(self.agents)
        if not 0 <= agent_index < self.n_agents:
            raise ValueError(f"agent_index = {agent_index}: the world has {self.n_agents} agents, so it must be in "
                             f"[0, {self.n_agents - 1}] (one rank per agent: run as many ranks as agents)")
        self.agent_index = int(agent_index)
        self.agent = self.agents[agent_index]
        self.seed = int(seed)
        space = env.observation_space(self.agent)
        self.obs_dim = int(np.prod(space.shape))
        action_space = env.action_space(self.agent)
        self.discrete = hasattr(action_space, "n")
        self.n_actions = int(action_space.n) if self.discrete else None
        self.action_shape = () if self.discrete else tuple(action_space.shape)
        self.episode = 0  # resets done so far
        self.team_reward = 0.0
        self._observations: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._actions: list[np.ndarray] = []  # joint actions since the last reset
        self.masked = bool(getattr(env, "action_masks", False))
        """The world restricts actions: infos carry `action_mask` (declared by the world's `action_masks`)."""
        self.metric_key = next((key for key in getattr(env, "metric_keys", ()) if key in METRICS), "")
        """What the world's `episode_metrics()` gives ("win", "arrival"), from its `metric_keys`, or ""."""
        self.has_reference = callable(getattr(env, "reference_actions", None))

    def reset(self) -> np.ndarray:
        """Start the next episode; returns the own observation (obs_dim,)."""
        observations, infos = self.env.reset(seed=episode_seed(self.seed, self.episode))
        self.episode += 1
        self._actions = []
        self.team_reward = 0.0
        self._observations = {agent: np.asarray(obs) for agent, obs in observations.items()}
        self._masks = {agent: np.asarray(info["action_mask"]) for agent, info in infos.items() if "action_mask" in info}
        return self._observations[self.agent].copy()

    @property
    def episode_over(self) -> bool:
        """Every agent has left the episode (the copies reset together, then)."""
        return not self.env.agents

    @property
    def active(self) -> bool:
        """The own agent is still in the episode."""
        return self.agent in self.env.agents

    def available_actions(self) -> np.ndarray | None:
        """The own agent's action mask for its next action (int8 (n_actions,), 1 = available), or None where the
        world has no masks."""
        return self._masks.get(self.agent)

    def play(self, episode: int, choose: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, Any]],
             ) -> tuple[float, dict[str, float]]:
        """Play episode `episode` (its reset seed, as `reset` gives it) with every agent's action from
        choose(observations, masks) for the agents in the episode; returns (team return: the sum over agents
        and steps of the rewards, the world's episode metrics). Leaves the copy at the episode's end."""
        self.episode = episode
        self.reset()
        total = 0.0
        while self.env.agents:
            actions = choose({a: self._observations[a] for a in self.env.agents}, self._masks)
            joint = np.zeros((self.n_agents, *self.action_shape))
            for k, agent in enumerate(self.agents):
                if agent in actions:
                    joint[k] = actions[agent]
            self.step_joint(joint)
            total += self.team_reward
        metrics = getattr(self.env, "episode_metrics", None)
        return total, (metrics() if metrics is not None else {})

    def step(self, joint_actions: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """`step_joint`: the world steps with everyone's actions."""
        return self.step_joint(joint_actions)

    def step_joint(self, joint_actions: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Step all agents still in the world with `joint_actions` (n_agents,) of action indices (or
        (n_agents, *action_shape) for Box actions); returns the own (observation, reward, terminated,
        truncated). Once the own agent has left the world its last observation and a zero reward come back."""
        joint_actions = np.asarray(joint_actions)
        expected = (self.n_agents, *self.action_shape)
        if joint_actions.shape != expected:
            raise ValueError(f"joint_actions has shape {joint_actions.shape}; expected {expected} "
                             "(one action per agent, in the order of possible_agents)")
        if not self.env.agents:
            raise RuntimeError("CoupledWorld.step after the episode ended: call reset() first")
        actions = {agent: self._action(joint_actions[k]) for k, agent in enumerate(self.agents)
                   if agent in self.env.agents}
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        self._actions.append(joint_actions.copy())
        self._observations.update({agent: np.asarray(obs) for agent, obs in observations.items()})
        self._masks.update({agent: np.asarray(info["action_mask"]) for agent, info in infos.items()
                            if "action_mask" in info})
        self.team_reward = float(sum(rewards.values()))
        return (self._observations[self.agent].copy(), float(rewards.get(self.agent, 0.0)),
                bool(terminations.get(self.agent, True)), bool(truncations.get(self.agent, False)))

    def _action(self, action: np.ndarray) -> Any:
        return int(action) if self.discrete else action.astype(np.float32)

    def digest(self) -> str:
        """SHA-256 of every agent's current observation (in possible_agents order): equal on all copies."""
        hasher = hashlib.sha256()
        for agent in self.agents:
            if agent in self._observations:
                hasher.update(agent.encode())
                hasher.update(np.ascontiguousarray(self._observations[agent]).tobytes())
        return hasher.hexdigest()

    def state_dict(self) -> dict[str, Any]:
        """The resets done and the joint actions since the last one: enough to rebuild the world exactly."""
        shape = (len(self._actions), *(self.n_agents, *self.action_shape))
        actions = np.stack(self._actions) if self._actions else np.zeros(shape)
        return {"seed": self.seed, "episode": self.episode, "actions": actions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the world of `state` by resetting its episode and replaying its joint actions."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"CoupledWorld state has seed {state['seed']} but this world was built with seed "
                             f"{self.seed}: resume with the run's original seed")
        episode = int(state["episode"])
        self.episode = max(episode - 1, 0)
        self._actions, self._observations, self.team_reward = [], {}, 0.0
        if episode == 0:
            return
        self.reset()
        for joint_actions in np.asarray(state["actions"]):
            self.step_joint(joint_actions)
