"""A world of your own (docs/worlds.md): n agents on a line of CELLS cells must pick distinct targets.

Each step an agent moves left, stays or moves right (Discrete(3)) and earns 1 if it stands on a target
that no other agent stands on. It observes its own cell, every agent's cell and every target, scaled to
[0, 1]. The episode is a function of its reset seed and the actions. Extras: action masks (no step off the
line) and a reference policy (agent k walks to the k-th target from the left). Train it with
`--set env.world=custom_world_example:make_world` (this folder on PYTHONPATH).
"""

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

CELLS = 8


class LineTargets(ParallelEnv):
    metadata = {"name": "line_targets_v0"}
    action_masks = True  # infos[agent]["action_mask"]: 1 = the action is allowed

    def __init__(self, n_agents: int, episode_length: int = 0) -> None:
        self.possible_agents = [f"agent_{k}" for k in range(n_agents)]
        self.agents: list[str] = []
        self.limit = episode_length or 20  # 0: the world's own limit
        self.spaces = (gymnasium.spaces.Box(0.0, 1.0, (1 + 2 * n_agents,), np.float32), gymnasium.spaces.Discrete(3))

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.spaces[0]  # the same object every call (PettingZoo's API test asks for it)

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return self.spaces[1]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        rng = np.random.default_rng(seed)  # everything random comes from the seed
        self.cells = rng.integers(CELLS, size=len(self.possible_agents))
        self.targets = np.sort(rng.choice(CELLS, size=len(self.possible_agents), replace=False))
        self.agents, self.steps = list(self.possible_agents), 0
        return self.observe(), self.infos()

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        moves = np.array([int(actions[agent]) - 1 for agent in self.possible_agents])  # 0, 1, 2 -> -1, 0, +1
        self.cells = np.clip(self.cells + moves, 0, CELLS - 1)
        self.steps += 1
        alone = [c in self.targets and np.sum(self.cells == c) == 1 for c in self.cells]
        rewards = {agent: float(alone[k]) for k, agent in enumerate(self.possible_agents)}
        over = dict.fromkeys(self.agents, self.steps >= self.limit)
        observations, infos = self.observe(), self.infos()
        if self.steps >= self.limit:
            self.agents = []  # truncated: every agent leaves
        return observations, rewards, dict.fromkeys(over, False), over, infos

    def observe(self) -> dict[str, np.ndarray]:
        shared = np.concatenate([self.cells, self.targets]) / (CELLS - 1)
        return {a: np.concatenate([[self.cells[k] / (CELLS - 1)], shared]).astype(np.float32)
                for k, a in enumerate(self.possible_agents)}

    def infos(self) -> dict[str, dict]:
        return {a: {"action_mask": np.array([c > 0, 1, c < CELLS - 1], np.int8)}
                for a, c in zip(self.possible_agents, self.cells)}

    def reference_actions(self, observations: dict) -> dict[str, int]:
        return {a: int(np.sign(self.targets[k] - self.cells[k])) + 1 for k, a in enumerate(self.possible_agents)
                if a in self.agents}


def make_world(n_agents: int, episode_length: int = 0) -> LineTargets:
    """The factory `env.world` names: one agent per rank, `episode_length` steps (0: 20)."""
    return LineTargets(n_agents, episode_length)
