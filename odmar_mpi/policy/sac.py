"""Soft actor-critic for one agent: tanh-Gaussian actor, twin critics with Polyak targets, learned temperature.

One update computes the three losses from the same batch and takes ONE backward pass and ONE Adam
step over all parameters (as rlkit's SAC, which also steps all losses from the pre-update
networks). This is exact, not an approximation of separate steps:
- the critic loss reaches only the critics (its TD target is computed without gradients);
- the actor loss reaches only the actor (it evaluates the critics with detached weights);
- the temperature loss reaches only log alpha (it uses a detached log-probability);
and Adam is elementwise, so one Adam over all parameters equals three Adams with the same
learning rate. The difference from CleanRL/Spinning Up is only that the actor sees the critics
before (not after) this step's critic update. No gradient clipping: the original's clipping ran
after `optimizer.step()` and so never acted.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import torch

from odmar_mpi.policy.networks import Actor, TwinCritic
from odmar_mpi.policy.replay import Batch
from odmar_mpi.policy.settings import SACConfig


class SAC:
    """Actor, twin critics, their targets and the temperature of one agent, on `device` in float32.

    Observations are divided by `obs_scale` before entering any network (world coordinates reach
    10; the node passes 10.0). Initialisation and sampling noise come from generators seeded here,
    so two SACs with the same seed are identical and `state_dict` round-trips resume bit-identically.

    `value_floor(next_obs) -> (B,)`, given raw (unscaled) next observations, is a lower bound on the
    value of those states that every TD target is floored at (`sac.hold_floor`); None = plain SAC.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig, device: torch.device | str, seed: int,
                 obs_scale: float = 1.0, value_floor: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not obs_scale > 0:
            raise ValueError(f"SAC obs_scale = {obs_scale}: must be > 0 (observations are divided by it)")
        self.config = config
        self.device = torch.device(device)
        self.act_dim = act_dim
        self.obs_scale = float(obs_scale)
        self.value_floor = value_floor
        self.target_entropy = float(config.target_entropy)
        init_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2)
        init_generator = torch.Generator().manual_seed(int(init_seed))
        hidden = tuple(config.hidden)
        self.actor = Actor(obs_dim, act_dim, hidden, init_generator, config.init).to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, hidden, init_generator, config.init).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        # fused: one kernel per parameter instead of ~10 (measured 0.3 ms vs 1.3 ms per step on 1 CPU thread).
        self.optimizer = torch.optim.Adam([*self.actor.parameters(), *self.critic.parameters(), self.log_alpha],
                                          lr=config.lr, fused=True)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(noise_seed))

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """One observation (obs_dim,) -> action (act_dim,) float64 in [-1, 1]; no gradients."""
        with torch.inference_mode():
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            return self.act_batch(x, deterministic)[0].cpu().numpy().astype(np.float64)

    def act_batch(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Observations (B, obs_dim) -> actions (B, act_dim) in [-1, 1]; no gradients.

        Stochastic actions draw from the policy's generator; deterministic ones are tanh(mean).
        """
        with torch.no_grad():
            x = obs / self.obs_scale
            if deterministic:
                return torch.tanh(self.actor(x)[0])
            return self.actor.sample(x, self.generator)[0]

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step of actor, critics and temperature, then the Polyak step of the targets.

        Returns 0-d detached tensors (no host sync here): critic_loss (sum over the two critics of
        the mean squared TD error), actor_loss, alpha_loss, alpha (used in this step), q_mean (mean
        Q of the batch over both critics), entropy (-mean log pi of the fresh actions).
        The TD target bootstraps through (1 - terminated): truncated episodes still bootstrap.
        """
        obs = batch.obs / self.obs_scale
        alpha = self.log_alpha.detach().exp()
        td_target = self.td_target(batch, alpha)
        q = self.critic(obs, batch.actions)
        critic_loss = (q - td_target).square().mean(1).sum()

        actions, log_prob = self.actor.sample(obs, self.generator)
        q_new = self.critic(obs, actions, frozen=True).amin(0)
        actor_loss = (alpha * log_prob - q_new).mean()

        mean_log_prob = log_prob.detach().mean()
        alpha_loss = -self.log_alpha * (mean_log_prob + self.target_entropy)

        self.optimizer.zero_grad(set_to_none=True)
        (critic_loss + actor_loss + alpha_loss).backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)

        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "alpha_loss": alpha_loss.detach(), "alpha": alpha, "q_mean": q.detach().mean(),
                "entropy": -mean_log_prob}

    def td_target(self, batch: Batch, alpha: torch.Tensor) -> torch.Tensor:
        """The soft TD target r + gamma (1 - terminated) (min of the target critics - alpha log pi) at s', a' ~ pi,
        floored at r + gamma (1 - terminated) value_floor(s') where a floor is given. No gradients; (B,)."""
        gamma = self.config.gamma
        with torch.no_grad():
            next_obs = batch.next_obs / self.obs_scale
            next_actions, next_log_prob = self.actor.sample(next_obs, self.generator)
            next_value = self.critic_target(next_obs, next_actions).amin(0) - alpha * next_log_prob
            if self.value_floor is not None:
                next_value = torch.maximum(next_value, self.value_floor(batch.next_obs))
            return batch.rewards + gamma * (1.0 - batch.terminated) * next_value

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies): networks, targets, optimiser, log alpha and the sampling generator's state."""
        return copy.deepcopy({
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` snapshot (tensors may be on any device, e.g. read from a checkpoint)."""
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
