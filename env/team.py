"""The whole team in one process, as a PettingZoo ParallelEnv: for users, rendering, and as the
test oracle for the per-agent `AgentEnv` copies (same helpers, all agents at once)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

from env.render import Window, render_rgb
from env.reward_world import (ACT_DIM, OBS_DIM, WORLD_HIGH, WORLD_LOW, RewardFunction, agent_gains,
                              check_positive_int, clip_actions, move, reward_sites, start_positions)

REWARD_SHARING = ("team", "local")


class TeamEnv(ParallelEnv):
    """All agents `agent_0 .. agent_{n-1}` stepping together in the reward-collection world.

    Observations: each agent's own position, (2,) float64 in the Box [-10, 10]^2. Actions:
    (2,) in the Box [-1, 1]^2 (values outside are clipped). Rewards: with
    `reward_sharing="team"` every agent gets the team reward (sum of the agents' own rewards, as
    the original); with `"local"` its own. `infos[agent]["own_reward"]` is always the own reward.
    All agents are truncated together after `episode_length` steps and then leave `agents`.
    """

    metadata = {"name": "reward_collection_v0", "render_modes": ["rgb_array", "human"], "render_fps": 10,
                "is_parallelizable": True}

    def __init__(self, n_agents: int = 5, n_rewards: int = 10, action_penalty: bool = True,
                 episode_length: int = 100, reward_sharing: str = "team", seed: int = 0,
                 render_mode: str | None = None):
        check_positive_int("n_agents", n_agents)
        check_positive_int("episode_length", episode_length)
        if reward_sharing not in REWARD_SHARING:
            raise ValueError(f"reward_sharing = {reward_sharing!r}: must be one of {REWARD_SHARING}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode = {render_mode!r}: must be None or one of {self.metadata['render_modes']}")
        self.n_agents = n_agents
        self.episode_length = episode_length
        self.reward_sharing = reward_sharing
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.agents: list[str] = []
        # One space object per agent, built once: PettingZoo seeds and compares them by identity.
        self.observation_spaces = {agent: gymnasium.spaces.Box(WORLD_LOW, WORLD_HIGH, (OBS_DIM,), np.float64)
                                   for agent in self.possible_agents}
        self.action_spaces = {agent: gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float64)
                              for agent in self.possible_agents}
        self.sites, self.values = reward_sites(n_rewards)
        self.reward_fn = RewardFunction(self.sites, self.values, action_penalty=action_penalty)
        self.start_positions = start_positions(n_agents)
        self.gains = agent_gains(n_agents, seed)
        self.positions = self.start_positions.copy()
        self.t = 0
        self.trails = np.empty((episode_length + 1, n_agents, OBS_DIM))  # positions at t = 0..t, for render()
        self.trails[0] = self.positions
        self._window = Window(self.metadata["render_fps"]) if render_mode == "human" else None

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start a new episode at the start positions. A `seed` re-derives the gains (the world's
        only randomness); without one they stay. `options` is accepted for the API and unused."""
        if seed is not None:
            self.gains = agent_gains(self.n_agents, seed)
        self.agents = self.possible_agents[:]
        self.positions[:] = self.start_positions
        self.t = 0
        self.trails[0] = self.positions
        if self.render_mode == "human":
            self.render()
        return self._observations(), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, bool],
                                                    dict[str, bool], dict[str, dict[str, Any]]]:
        """Move every agent by its action; returns (observations, rewards, terminations,
        truncations, infos), each keyed by agent."""
        if not self.agents:
            raise RuntimeError("step() with no live agents: the episode is over, call reset() first")
        if set(actions) != set(self.agents):
            raise ValueError(f"step() needs one action per live agent {self.agents}, got actions for {sorted(actions)}")
        stacked = clip_actions([actions[agent] for agent in self.agents])
        if stacked.shape != (self.n_agents, ACT_DIM) or not np.isfinite(stacked).all():
            raise ValueError(f"each action must be {ACT_DIM} finite numbers, got {actions!r}")
        move(self.positions, stacked, self.gains, out=self.positions)
        self.t += 1
        self.trails[self.t] = self.positions
        own = self.reward_fn(self.positions, stacked)
        shared = np.full(self.n_agents, own.sum()) if self.reward_sharing == "team" else own
        observations = self._observations()
        rewards = {agent: float(r) for agent, r in zip(self.agents, shared)}
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, self.t == self.episode_length)
        infos = {agent: {"own_reward": float(r)} for agent, r in zip(self.agents, own)}
        if self.t == self.episode_length:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return observations, rewards, terminations, truncations, infos

    def render(self) -> np.ndarray | None:
        """"rgb_array": the current frame (see `render_rgb`), with the episode's trails so far;
        "human": shows it in a matplotlib window."""
        if self.render_mode is None:
            gymnasium.logger.warn("TeamEnv.render() without a render_mode: pass render_mode='rgb_array' or 'human'")
            return None
        frame = render_rgb(self.positions, self.sites, self.values, trails=self.trails[: self.t + 1])
        if self._window is not None:
            self._window.show(frame)
            return None
        return frame

    def close(self) -> None:
        if self._window is not None:
            self._window.close()

    def _observations(self) -> dict[str, np.ndarray]:
        # Agents live and leave together, so a live list is always the whole team in order.
        return {agent: self.positions[i].copy() for i, agent in enumerate(self.agents)}
