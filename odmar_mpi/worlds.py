"""The world copy a rank steps, built from the configuration (the same world on every rank).

Two kinds, one interface (what the node and the learners use):

- the reward-collection world (`env.AgentEnv`): agents do not interact, so a rank's copy moves only
  its own agent and needs nobody's action (`coupled = False`);
- coupled PettingZoo worlds (`env.coupled.CoupledWorld`, e.g. mpe2's simple_spread): every copy steps
  every agent, so each step needs the joint action (`coupled = True`), which the node floods.

`step(action, joint)` returns (own observation, own reward, terminated, truncated); `joint` is the
(n_agents, action_width) table of every rank's action for coupled worlds and None otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import env as world_package
from env import coupled
from env.coupled import METRICS, CoupledWorld, make_coupled_env, random_action
from env.optimum import optimal_team_return

REWARD_COLLECTION = "reward-collection"
# The package each coupled world needs, and how to install it.
WORLD_PACKAGES = {"simple_spread": ("mpe2", "pip install mpe2  (or: pip install -e '.[mpe]')"),
                  "smax": ("jaxmarl", "pip install -e '.[smax]'  (jaxmarl 0.2.0 with CPU jax)"),
                  "flatland": ("flatland", "make flatland  (flatland-rl 4.3.0 without its numpy<2 pin)")}
# Worlds whose every agent already gets the team's reward as its own (SMAX's battle reward), so "local" sharing
# learns from the team reward there.
TEAM_REWARD_WORLDS = frozenset({"smax"})


def world_options(cfg: Any) -> dict[str, Any]:
    """The options a coupled world's factory gets from the config (its scenario, where one is named)."""
    return {"scenario": cfg.env.scenario} if cfg.env.scenario else {}


def coupled_world_sizes(cfg: Any, ranks: int) -> tuple[int, int, bool]:
    """(observation size, number of actions, whether actions are masked) of the configured coupled world with
    `ranks` agents, read off one copy of it."""
    env = make_coupled_env(cfg.env.world, ranks, cfg.env.episode_length, **world_options(cfg))
    agent = env.possible_agents[0]
    sizes = (int(np.prod(env.observation_space(agent).shape)), int(env.action_space(agent).n),
             bool(getattr(env, "action_masks", False)))
    env.close()
    return sizes


def check_world(cfg: Any, ranks: int) -> None:
    """ValueError (or MissingWorldPackage) naming what is wrong with the configured world for `ranks` ranks."""
    if cfg.env.world != REWARD_COLLECTION:
        coupled.check_world(cfg.env.world, ranks, cfg.env.episode_length, **world_options(cfg))


class RewardWorldCopy(world_package.AgentEnv):
    """This rank's copy of the reward-collection world, moving only this rank's agent."""

    coupled = False
    discrete = False
    active = True  # an agent is in its episode until the episode ends
    episode_over = False

    @property
    def action_width(self) -> int:
        return self.act_dim

    def available_actions(self) -> None:
        return None  # continuous actions, all allowed

    def reset(self) -> np.ndarray:
        self.episode_over = False
        return super().reset()

    def step(self, action: Any, joint: np.ndarray | None = None) -> tuple[np.ndarray, float, bool, bool]:
        obs, reward, truncated = super().step(action)
        self.episode_over = truncated
        return obs, reward, False, truncated


class CoupledWorldCopy(CoupledWorld):
    """This rank's copy of a jointly stepped PettingZoo world with discrete actions."""

    coupled = True
    action_width = 1

    @property
    def metric(self) -> str:
        """The name of the mean of the world's episode metric ("win_rate", "arrival_rate"), or ""."""
        return METRICS.get(self.metric_key, "")

    def baselines(self, episodes: range, draws: int, rank: int, ranks: int) -> np.ndarray:
        """This rank's share of the baselines of an evaluation that played `episodes`: the team on the same
        episodes with uniformly random allowed actions (`draws` plays of each, drawn from (seed, episode, draw))
        and with the world's reference policy (one play), the plays dealt round-robin over the ranks. Returns the
        sums over this rank's plays of [random team return, random metric, reference team return, reference
        metric] (NaN where the world has no metric or no reference); the node adds the ranks' sums up."""
        sums = np.zeros(4)
        plays = [(draw, episode) for draw in range(draws + 1) for episode in episodes]
        for draw, episode in plays[rank::ranks]:
            reference = draw == draws
            if reference and not self.has_reference:
                sums[2:] = np.nan
                continue
            rng = np.random.default_rng([self.seed, episode, draw])
            choose = ((lambda observations, masks: self.env.reference_actions(observations)) if reference else
                      (lambda observations, masks: {agent: random_action(rng, self.n_actions, masks.get(agent))
                                                    for agent in observations}))
            team, metrics = self.play(episode, choose)
            at = 2 if reference else 0
            sums[at] += team
            sums[at + 1] += metrics.get(self.metric_key, np.nan)
        return sums

    def reset(self) -> np.ndarray:
        return super().reset().astype(np.float64)

    idle_action = np.asarray(0)  # what a rank sends while its agent is out of the episode (the world ignores it)

    def step(self, action: Any, joint: np.ndarray | None = None) -> tuple[np.ndarray, float, bool, bool]:
        """Step every agent still in the episode with its entry of `joint`; the own agent's (observation, reward,
        terminated, truncated). An agent may leave before the others (`active`); the copies reset together
        once the episode is over for all (`episode_over`)."""
        obs, reward, terminated, truncated = self.step_joint(np.asarray(joint[:, 0], dtype=np.int64))
        return obs.astype(np.float64), reward, terminated, truncated

    def sample_action(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random action index (as a 0-d int array)."""
        return np.asarray(rng.integers(self.n_actions))


def make_world(cfg: Any, rank: int, n_agents: int) -> RewardWorldCopy | CoupledWorldCopy:
    """This rank's copy of the configured world."""
    if cfg.env.world == REWARD_COLLECTION:
        return RewardWorldCopy(n_agents=n_agents, agent_id=rank, seed=cfg.run.seed, n_rewards=cfg.env.n_rewards,
                               action_penalty=cfg.env.action_penalty, episode_length=cfg.env.episode_length)
    return CoupledWorldCopy(make_coupled_env(cfg.env.world, n_agents, cfg.env.episode_length, **world_options(cfg)),
                            agent_index=rank, seed=cfg.run.seed)


def world_optimum(cfg: Any, n_agents: int) -> float:
    """The best team return of the configured world (docs/architecture.md, "The optimum"); NaN where unknown."""
    if cfg.env.world != REWARD_COLLECTION:
        return math.nan
    team, _ = optimal_team_return(n_agents, cfg.run.seed, cfg.env.n_rewards, cfg.env.action_penalty,
                                  cfg.env.episode_length)
    return team
