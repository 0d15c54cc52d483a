"""Optimistic imagined rollouts: the current policy acting in the learned model, rewarded for uncertainty.

The caller stores the rollouts in a circular imagined buffer of capacity B * H * keep, so it holds
exactly the last `keep` model updates' rollouts. This is a deliberate departure from the original,
which never clears its imagined buffer: old rollouts come from an outdated model and policy.
"""

from __future__ import annotations

from typing import Callable

import torch

from odmar_mpi.policy.replay import Batch
from odmar_mpi.policy.sac import SAC

Predict = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def imagine_rollouts(predict: Predict, reward_fn: RewardFn, policy: SAC, start_states: torch.Tensor,
                     horizon: int, beta: float) -> tuple[Batch, dict[str, float]]:
    """Roll B start states forward `horizon` steps together through the model; return the B*H transitions.

    predict(states (B, d), actions (B, a)) -> (next-state mean (B, d), predictive std (B, d)) is
    called exactly once per step with all B states. Actions come from the current stochastic policy.
    The next state is the predicted mean, and the stored reward is the optimistic
        reward_fn(next_mean, action) + beta * std.sum(-1)
    i.e. the known reward at the predicted state plus beta times the std summed over the output
    dimensions (as the original's bonus). Imagined transitions never terminate (terminated = 0).
    Transitions are ordered step by step: the B of step 0, then the B of step 1, ...

    Stats (floats): bonus_mean (mean bonus), reward_mean (mean stored reward, bonus included),
    std_mean (mean predictive std over transitions and output dimensions).
    """
    if horizon < 1:
        raise ValueError(f"imagine_rollouts: horizon = {horizon}; must be >= 1 (model.rollout_length)")
    if start_states.ndim != 2 or start_states.shape[0] < 1:
        raise ValueError(f"imagine_rollouts: start_states must be (B >= 1, obs_dim), got {tuple(start_states.shape)}")
    observations, actions, rewards, next_observations, bonuses, stds = [], [], [], [], [], []
    states = start_states
    with torch.no_grad():
        for _ in range(horizon):
            action = policy.act_batch(states)
            next_mean, std = predict(states, action)
            if next_mean.shape != states.shape or std.shape != states.shape:
                raise ValueError(f"imagine_rollouts: predict returned mean {tuple(next_mean.shape)} and std "
                                 f"{tuple(std.shape)} for states {tuple(states.shape)}; both must match the states")
            bonus = beta * std.sum(-1)
            observations.append(states)
            actions.append(action)
            rewards.append(reward_fn(next_mean, action) + bonus)
            next_observations.append(next_mean)
            bonuses.append(bonus)
            stds.append(std)
            states = next_mean
        reward = torch.cat(rewards)
        batch = Batch(torch.cat(observations), torch.cat(actions), reward, torch.cat(next_observations),
                      torch.zeros_like(reward))
        stats = {"bonus_mean": float(torch.cat(bonuses).mean()), "reward_mean": float(reward.mean()),
                 "std_mean": float(torch.cat(stds).mean())}
    return batch, stats
