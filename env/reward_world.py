"""The reward-collection world (docs/architecture.md, "The reward-collection world"), a port of the original `env.py`.

Agents move on the square [-10, 10]^2. Every step, an agent within distance < 0.5 of a reward
site collects that site's value (sites never deplete), minus sum |action| when the action
penalty is on. Agent i moves by `action * gain_i`, with gains drawn once from the shared seed,
so every rank's copy of the world is the same world. The dynamics are plain numpy; the reward
function also takes torch tensors so imagined rollouts can evaluate it where their data lives.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np

WORLD_LOW: float = -10.0
WORLD_HIGH: float = 10.0
OBS_DIM = 2  # own (x, y)
ACT_DIM = 2  # (dx, dy) in [-1, 1]^2
COLLECTION_RADIUS = 0.5  # strict: distance < 0.5 collects
SITE_VALUES = (1.0, 5.0, 10.0)  # cycled over the sites, then divided by the largest
START_RADIUS = 0.3 * (WORLD_HIGH - WORLD_LOW)  # agents start on this circle around the centre
GAIN_MEAN = 1.0
GAIN_STD = 0.1


def check_positive_int(name: str, value: Any) -> None:
    """Raise a ValueError naming `name` unless `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r}: must be an integer >= 1")


def reward_sites(n_rewards: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reward sites on a regular grid inside the world, row-major from the bottom-left.

    Returns `(sites, values)`: sites (n_rewards, 2) float64 positions
    `(WORLD_LOW + (col+1)*dx, WORLD_LOW + (row+1)*dy)` with `n_cols = ceil(sqrt(n))`,
    `n_rows = ceil(n / n_cols)`, `dx = 20/(n_cols+1)`, `dy = 20/(n_rows+1)`; values (n_rewards,)
    float64 cycling through 1, 5, 10 divided by 10, i.e. 0.1, 0.5, 1.0, 0.1, ...
    """
    check_positive_int("n_rewards", n_rewards)
    n_cols = math.ceil(math.sqrt(n_rewards))
    n_rows = math.ceil(n_rewards / n_cols)
    dx = (WORLD_HIGH - WORLD_LOW) / (n_cols + 1)
    dy = (WORLD_HIGH - WORLD_LOW) / (n_rows + 1)
    row, col = np.divmod(np.arange(n_rewards), n_cols)
    sites = np.stack([WORLD_LOW + (col + 1) * dx, WORLD_LOW + (row + 1) * dy], axis=1)
    values = np.asarray(SITE_VALUES)[np.arange(n_rewards) % len(SITE_VALUES)] / max(SITE_VALUES)
    return sites, values


def start_positions(n_agents: int) -> np.ndarray:
    """Start positions (n_agents, 2) float64: agent i at angle 2*pi*i/N on the circle of radius 6
    around the centre; a single agent starts at the centre."""
    check_positive_int("n_agents", n_agents)
    if n_agents == 1:
        return np.zeros((1, OBS_DIM))
    angles = 2.0 * np.pi * np.arange(n_agents) / n_agents
    return START_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def agent_gains(n_agents: int, seed: int) -> np.ndarray:
    """Per-agent, per-axis action gains (n_agents, 2) float64 ~ Normal(1.0, 0.1), the world's
    only randomness. A function of (n_agents, seed) alone, so every copy of the world agrees."""
    check_positive_int("n_agents", n_agents)
    return np.random.default_rng(seed).normal(GAIN_MEAN, GAIN_STD, size=(n_agents, ACT_DIM))


def clip_actions(actions: Any) -> np.ndarray:
    """Actions as a new float64 array clipped to the action box [-1, 1] (any shape; NaN stays NaN)."""
    # maximum/minimum rather than np.clip: same result, a third of the overhead on a 2-vector.
    return np.minimum(np.maximum(actions, -1.0, dtype=np.float64), 1.0)


def move(positions: np.ndarray, actions: np.ndarray, gains: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Next positions `clip(positions + actions * gains, WORLD_LOW, WORLD_HIGH)`, last dim 2.

    `actions` must already be clipped (see `clip_actions`). Writes into `out` when given, which
    may be `positions` itself; returns the result.
    """
    out = np.add(positions, actions * gains, out=out)
    np.maximum(out, WORLD_LOW, out=out)
    return np.minimum(out, WORLD_HIGH, out=out)


def _is_torch_tensor(x: Any) -> bool:
    # Only an imported torch can have made a tensor, so numpy users never pay for importing it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_last_dim(name: str, x: Any, size: int) -> None:
    if tuple(x.shape[-1:]) != (size,):
        raise ValueError(f"{name} must have last dimension {size}, got shape {tuple(x.shape)}")


class RewardFunction:
    """Vectorised reward of one or many agents at positions, any leading batch dims, last dim 2.

    Works on numpy arrays and torch tensors (any device and floating dtype); the result has
    shape `positions.shape[:-1]` and the type, device and dtype of `positions` (numpy: float64).
    The reward is the sum of the values of all sites strictly within `radius` (a point near two
    sites collects both, as the original), minus `sum |action|` over the last dim when
    `action_penalty` is on. Actions are used as given (the environments pass clipped ones) and
    are not read at all when the penalty is off.
    """

    def __init__(self, sites: np.ndarray, values: np.ndarray, action_penalty: bool, radius: float = COLLECTION_RADIUS):
        self.sites = np.array(sites, dtype=np.float64)
        self.values = np.array(values, dtype=np.float64)
        if self.sites.ndim != 2 or self.sites.shape[1] != OBS_DIM or self.values.shape != self.sites.shape[:1]:
            raise ValueError(f"sites must be (n, {OBS_DIM}) and values (n,), "
                             f"got shapes {self.sites.shape} and {self.values.shape}")
        if not radius > 0:
            raise ValueError(f"radius = {radius!r}: must be > 0")
        self.action_penalty = bool(action_penalty)
        self.radius = float(radius)
        self._torch_constants: dict[tuple[Any, Any], tuple[Any, Any]] = {}

    def __call__(self, positions: Any, actions: Any) -> Any:
        if _is_torch_tensor(positions):
            sites, values = self._sites_as_tensors(positions.device, positions.dtype)
        else:
            positions = np.asarray(positions, dtype=np.float64)
            if self.action_penalty:
                actions = np.asarray(actions, dtype=np.float64)
            sites, values = self.sites, self.values
        _check_last_dim("positions", positions, OBS_DIM)
        offsets = positions[..., None, :] - sites  # (..., n_sites, 2)
        # Squared distances against radius^2: same decision as distance < radius, and exact
        # elementwise arithmetic, so numpy and torch agree bit for bit.
        inside = (offsets * offsets).sum(-1) < self.radius**2
        rewards = (inside * values).sum(-1)
        if self.action_penalty:
            _check_last_dim("actions", actions, ACT_DIM)
            rewards = rewards - abs(actions).sum(-1)
        return rewards

    def _sites_as_tensors(self, device: Any, dtype: Any) -> tuple[Any, Any]:
        """Sites and values as tensors on `device`, converted once per (device, dtype)."""
        key = (device, dtype)
        if key not in self._torch_constants:
            torch = sys.modules["torch"]
            self._torch_constants[key] = (torch.as_tensor(self.sites, dtype=dtype, device=device),
                                          torch.as_tensor(self.values, dtype=dtype, device=device))
        return self._torch_constants[key]


@functools.lru_cache(maxsize=None)
def _reward_function(n_rewards: int, action_penalty: bool) -> RewardFunction:
    return RewardFunction(*reward_sites(n_rewards), action_penalty=action_penalty)


def reward(positions: Any, actions: Any, *, n_rewards: int = 10, action_penalty: bool = True) -> Any:
    """The world's reward at `positions` after `actions` (see RewardFunction), with the
    standard sites for `n_rewards`."""
    return _reward_function(n_rewards, bool(action_penalty))(positions, actions)


class AgentEnv:
    """One agent's own copy of the world: rank r steps only agent r.

    Every copy built with the same (n_agents, seed, n_rewards) has the same sites and gains.
    Observations are the agent's own position (2,) float64; actions are (2,) and are clipped to
    [-1, 1]^2. Episodes end by truncation after `episode_length` steps (no terminal state).
    `hold_action` (zero) keeps the agent where it is at no cost, and sites never deplete, so holding
    at a position earns `reward_fn(position, hold_action)` every step, for ever.
    """

    hold_action = np.zeros(ACT_DIM)

    def __init__(self, n_agents: int, agent_id: int, seed: int, n_rewards: int = 10,
                 action_penalty: bool = True, episode_length: int = 100):
        check_positive_int("n_agents", n_agents)
        check_positive_int("episode_length", episode_length)
        if not 0 <= agent_id < n_agents:
            raise ValueError(f"agent_id = {agent_id!r} is not in 0..{n_agents - 1} (n_agents = {n_agents}); "
                             "pass the rank of this agent")
        self.n_agents = n_agents
        self.agent_id = agent_id
        self.episode_length = episode_length
        self.obs_dim = OBS_DIM
        self.act_dim = ACT_DIM
        self.obs_low = np.full(OBS_DIM, WORLD_LOW)
        self.obs_high = np.full(OBS_DIM, WORLD_HIGH)
        self.act_low = np.full(ACT_DIM, -1.0)
        self.act_high = np.full(ACT_DIM, 1.0)
        self.gain = agent_gains(n_agents, seed)[agent_id].copy()
        self.reward_fn = RewardFunction(*reward_sites(n_rewards), action_penalty=action_penalty)
        self.start_position = start_positions(n_agents)[agent_id].copy()
        self.position = self.start_position.copy()
        self.t = 0

    def reset(self) -> np.ndarray:
        """Back to the own start position at t = 0; returns a copy of it, (2,) float64."""
        self.position[:] = self.start_position
        self.t = 0
        return self.position.copy()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        """Apply `action` (2,): returns (next position copy, own reward at it, truncated)."""
        if self.t >= self.episode_length:
            raise RuntimeError(f"agent {self.agent_id}: step() after the episode ended at t = {self.t}; "
                               "call reset() first")
        action = clip_actions(action)
        if action.shape != (ACT_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"agent {self.agent_id}: action must be {ACT_DIM} finite numbers, got {action!r}")
        move(self.position, action, self.gain, out=self.position)
        self.t += 1
        own_reward = float(self.reward_fn(self.position, action))
        return self.position.copy(), own_reward, self.t == self.episode_length

    def sample_action(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random action (warm-up exploration), drawn from `rng`."""
        return rng.uniform(-1.0, 1.0, ACT_DIM)

    def state_dict(self) -> dict[str, Any]:
        """Where the agent is and how far into the episode (the world's only changing state)."""
        return {"position": self.position.copy(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position[:] = state["position"]
        self.t = int(state["t"])
