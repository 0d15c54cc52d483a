"""The reward-collection world (docs/architecture.md, "The reward-collection world").

`AgentEnv` is one agent's own copy (what each MPI rank steps), `RewardFunction` / `reward` the
vectorised reward for imagination (numpy or torch), `TeamEnv` the whole team as a PettingZoo
ParallelEnv. `TeamEnv` and `parallel_env` import PettingZoo (the 'test' extra) only when used.
"""

from __future__ import annotations

from typing import Any

from env.coupled import CoupledWorld, MissingWorldPackage, make_coupled_env, register_world
from env.render import render_rgb
from env.reward_world import (ACT_DIM, OBS_DIM, WORLD_HIGH, WORLD_LOW, AgentEnv, RewardFunction, agent_gains,
                              reward, reward_sites, start_positions)

__all__ = ["ACT_DIM", "OBS_DIM", "WORLD_HIGH", "WORLD_LOW", "AgentEnv", "RewardFunction", "TeamEnv", "agent_gains",
           "parallel_env", "render_rgb", "reward", "reward_sites", "start_positions",
           "CoupledWorld", "MissingWorldPackage", "make_coupled_env", "register_world"]


def parallel_env(**kwargs: Any) -> Any:
    """A `TeamEnv(**kwargs)`, under the name PettingZoo users expect."""
    from env.team import TeamEnv

    return TeamEnv(**kwargs)


def __getattr__(name: str) -> Any:
    # TeamEnv needs PettingZoo, which training ranks do not: import it on first use only.
    if name == "TeamEnv":
        from env.team import TeamEnv

        return TeamEnv
    raise AttributeError(f"module 'env' has no attribute {name!r}")
