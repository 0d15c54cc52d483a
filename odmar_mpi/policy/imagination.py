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
                     horizon: int, beta: float, return_steps: int = 1) -> tuple[Batch, dict[str, float]]:
    """Roll B start states forward `horizon` steps together through the model; return the B*H transitions.

    predict(states (B, d), actions (B, a)) -> (next-state mean (B, d), predictive std (B, d)) is
    called exactly once per step with all B states. Actions come from the current stochastic policy.
    The next state is the predicted mean, and the stored reward is the optimistic
        reward_fn(next_mean, action) + beta * std.sum(-1)
    i.e. the known reward at the predicted state plus beta times the std summed over the output
    dimensions (as the original's bonus). Imagined transitions never terminate (terminated = 0).
    Transitions are ordered step by step: the B of step 0, then the B of step 1, ...

    With return_steps = n > 1 the transition from step t carries the n-step return instead (n_step_returns):
    the critic's target then reaches n rewards ahead in one backup, which is what lets its value of a distant
    site converge within a short schedule (docs/architecture.md, "Departures").

    Stats (floats): bonus_mean (mean bonus), reward_mean (mean stored reward, bonus included),
    std_mean (mean predictive std over transitions and output dimensions).
    """
    if horizon < 1:
        raise ValueError(f"imagine_rollouts: horizon = {horizon}; must be >= 1 (model.rollout_length)")
    if start_states.ndim != 2 or start_states.shape[0] < 1:
        raise ValueError(f"imagine_rollouts: start_states must be (B >= 1, obs_dim), got {tuple(start_states.shape)}")
    if return_steps < 1:
        raise ValueError(f"imagine_rollouts: return_steps = {return_steps}; must be >= 1 (model.return_steps)")
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
        returns, ends, steps = n_step_returns(torch.stack(rewards), torch.stack(next_observations),
                                              policy.config.gamma, return_steps)
        batch = Batch(torch.cat(observations), torch.cat(actions), returns.flatten(), ends.flatten(0, 1),
                      torch.zeros_like(reward), steps.flatten())
        stats = {"bonus_mean": float(torch.cat(bonuses).mean()), "reward_mean": float(reward.mean()),
                 "std_mean": float(torch.cat(stds).mean())}
    return batch, stats


def n_step_returns(rewards: torch.Tensor, next_states: torch.Tensor, gamma: float,
                   n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n-step returns of H-step rollouts: rewards (H, B) and next states (H, B, d) of steps 0..H-1 ->
    returns (H, B), bootstrap states (H, B, d) and their distance in steps (H, B).

    Step t spans m = min(n, H - t) steps (the rollout's end cuts the last ones short): its return is
    sum_{k<m} gamma^k r_{t+k} and it bootstraps from the state after step t+m-1, gamma^m ahead. The
    soft-value entropy terms of the m - 1 intermediate states are left out, as n-step SAC commonly does.
    n = 1 returns the one-step rewards and next states unchanged.
    """
    horizon = rewards.shape[0]
    returns = torch.empty_like(rewards)
    ends = torch.empty_like(next_states)
    steps = torch.empty_like(rewards)
    for t in range(horizon):
        m = min(n, horizon - t)
        discounts = gamma ** torch.arange(m, dtype=rewards.dtype, device=rewards.device)
        returns[t] = (discounts[:, None] * rewards[t:t + m]).sum(0) if m > 1 else rewards[t]
        ends[t] = next_states[t + m - 1]
        steps[t] = m
    return returns, ends, steps
