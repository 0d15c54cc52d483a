"""The world copy a rank steps, built from the configuration (the same world on every rank)."""

from __future__ import annotations

from typing import Any

import env as world_package
from env.optimum import optimal_team_return


def make_world(cfg: Any, rank: int, n_agents: int) -> world_package.AgentEnv:
    """This rank's copy of the reward-collection world, moving only this rank's agent."""
    return world_package.AgentEnv(n_agents=n_agents, agent_id=rank, seed=cfg.run.seed, n_rewards=cfg.env.n_rewards,
                                  action_penalty=cfg.env.action_penalty, episode_length=cfg.env.episode_length)


def world_optimum(cfg: Any, n_agents: int) -> float:
    """The best team return of the configured world (docs/architecture.md, "The optimum")."""
    team, _ = optimal_team_return(n_agents, cfg.run.seed, cfg.env.n_rewards, cfg.env.action_penalty,
                                  cfg.env.episode_length)
    return team
