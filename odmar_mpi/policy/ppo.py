"""PPO for one agent's actor and critic, shared by MAMBA (imagined data) and the IPPO baseline (real data).

The actor is an MLP from the agent's own features to a categorical over discrete actions; the critic
embeds a set of feature vectors (the agent and its neighbours; the agent alone for IPPO), mixes them
with one attention layer (padding masked) and reads the agent's row (member 0) to a value. This module
sees feature tensors only: MAMBA gives it [z, h] from the world model's imagination, IPPO gives it the
agent's own observations. Everything random draws from an explicit torch.Generator.

Following MAMBA's learner (agent/learners/DreamerLearner.py, agent/optim): lambda-returns bootstrapped
from the critic's value at the last state, advantages = returns - values normalised once over the batch
(std + 1e-4), then `epochs` passes over shuffled minibatches, each one actor step (clipped ratio + the
entropy bonus, whose coefficient decays after every actor step) followed by one critic step (squared
error / 2), gradient norms clipped before each Adam step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from odmar_mpi.layers import first_layer, initialise
from odmar_mpi.policy.settings import PPOConfig

Tensor = torch.Tensor
UNAVAILABLE = -1e9
"""The logit of an unavailable action (not -inf: a probability of 0 times its log-probability stays 0)."""


def _mlp(in_dim: int, out_dim: int, layers: int, hidden: int, classes: Sequence[int] = ()) -> nn.Sequential:
    """`layers` ReLU hidden layers of width `hidden`, then a linear output (MAMBA's build_model); the first layer
    reads one-hot groups of `classes` by index (odmar_mpi.layers.first_layer)."""
    modules: list[nn.Module] = []
    for k in range(layers):
        modules += [first_layer(in_dim, hidden, classes) if k == 0 else nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(hidden, out_dim))


class Actor(nn.Module):
    """MLP from the agent's own features (..., in_dim) to logits (..., n_actions); orthogonal init as MAMBA, the
    output layer's weights scaled by `actor_output_gain` and its bias zero. Features that begin with class
    indices of one-hot groups (`classes`: MAMBA's compact [z, h]) are read by a CategoricalLinear."""

    def __init__(self, in_dim: int, n_actions: int, config: PPOConfig, seed: int, classes: Sequence[int] = ()) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # a private seeded RNG; the caller's global RNG is untouched
            torch.manual_seed(seed)
            self.net = _mlp(in_dim, n_actions, config.actor_layers, config.actor_hidden, classes)
            initialise(self, nn.init.orthogonal_)
            with torch.no_grad():
                # a zero output bias: no action is preferred in every state alike (with weights shared by the
                # agents, such a preference drives them all the same way); a small gain starts near uniform
                self.net[-1].weight.mul_(config.actor_output_gain)
                self.net[-1].bias.zero_()

    def forward(self, features: Tensor, available: Tensor | None = None) -> Tensor:
        """Logits (..., n_actions) at features (..., in_dim); those of actions not `available` ((..., n_actions)
        bool) are UNAVAILABLE, so sampling, log-probabilities and entropy are all over the available ones."""
        logits = self.net(features)
        return logits if available is None else logits.masked_fill(~available, UNAVAILABLE)

    @torch.no_grad()
    def sample(self, features: Tensor, generator: torch.Generator, available: Tensor | None = None) -> Tensor:
        """Actions (...,) long drawn from the policy at features (..., in_dim), among the available ones."""
        probs = self(features, available).softmax(-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])

    @torch.no_grad()
    def act(self, features: Tensor, generator: torch.Generator, greedy: bool,
            available: Tensor | None = None) -> tuple[int, float]:
        """One action at features (1, in_dim) among the `available` ones ((1, n_actions) bool), the most probable
        (greedy) or drawn from the policy, and its log-probability under the policy (PPO's ratio divides by it)."""
        logits = self(features, available)[0]
        if greedy:
            action = logits.argmax()
        else:
            action = torch.multinomial(logits.softmax(-1), 1, generator=generator)[0]
        log_prob = logits.log_softmax(-1)[action]
        return int(action), float(log_prob)


class Critic(nn.Module):
    """MAMBA's AugmentedCritic restricted to a set: ReLU(Linear) embedding of each member's features, one
    post-norm transformer encoder layer over the members (8 heads, feed-forward width = hidden, no
    dropout, invalid members masked), ReLU, then an MLP -> member 0's value. Only member 0's row of the
    layer is computed (the others would be discarded). Members form a set: no position encoding. The
    embedding reads features beginning with class indices of one-hot groups (`classes`) by index."""

    def __init__(self, in_dim: int, config: PPOConfig, seed: int, classes: Sequence[int] = ()) -> None:
        super().__init__()
        hidden = config.critic_hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = first_layer(in_dim, hidden, classes)
            self.attention = nn.MultiheadAttention(hidden, config.critic_heads, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.linear1, self.linear2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.head = _mlp(hidden, 1, 1, hidden)
            initialise(self, nn.init.xavier_uniform_)

    def forward(self, features: Tensor, valid: Tensor) -> Tensor:
        """features (..., M, in_dim), valid (..., M) bool with member 0 valid -> value of member 0 (...,)."""
        members, width = features.shape[-2], self.embed.out_features
        heads = self.attention.num_heads
        x = F.relu(self.embed(features)).reshape(-1, members, width)
        padding = ~valid.expand(features.shape[:-1]).reshape(-1, members)
        own = x[:, 0]
        # nn.MultiheadAttention's own math for the one query row (its kernels cost ~25% of a PPO update here)
        weight, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        q = F.linear(own, weight[:width], bias[:width]).view(-1, heads, width // heads)
        k, v = F.linear(x, weight[width:], bias[width:]).view(-1, members, 2, heads, width // heads).unbind(2)
        # products of one query row with a few members: broadcast and sum (bmm of 1 x d by d x M is slow on CPU)
        scores = (q.unsqueeze(1) * k).sum(-1).transpose(1, 2) / math.sqrt(width // heads)  # (b, heads, M)
        weights = scores.masked_fill(padding.unsqueeze(1), float("-inf")).softmax(-1)
        mixed = (weights.transpose(1, 2).unsqueeze(-1) * v).sum(1).reshape(-1, width)
        own = self.norm1(own + self.attention.out_proj(mixed))
        own = self.norm2(own + self.linear2(F.relu(self.linear1(own))))
        return self.head(F.relu(own)).view(features.shape[:-2])


def lambda_returns(rewards: Tensor, values: Tensor, discounts: Tensor, lam: float) -> Tensor:
    """TD(lambda) targets R_t = r_t + d_t ((1 - lam) v_{t+1} + lam R_{t+1}), R_H = v_H, for rewards (H, ...),
    values (H + 1, ...) and discounts d_t (H, ...) (gamma times the probability of going on) -> (H, ...).
    lam = 1 gives discounted returns bootstrapped with v_H; lam = 0 one-step targets r_t + d_t v_{t+1}."""
    returns = []
    following = values[-1]
    for t in reversed(range(rewards.shape[0])):
        following = rewards[t] + discounts[t] * ((1.0 - lam) * values[t + 1] + lam * following)
        returns.append(following)
    return torch.stack(returns[::-1])


def clipped_policy_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float,
                        weights: Tensor | None = None) -> Tensor:
    """PPO's clipped surrogate, to minimise: mean of -w min(rho A, clip(rho, 1 - clip, 1 + clip) A),
    rho = exp(log_probs - old_log_probs), the mean weighted by `weights` (default 1); all (n,)."""
    ratio = (log_probs - old_log_probs).exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    return -surrogate.mean() if weights is None else -weighted_mean(surrogate, weights)


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(w x) / sum(w): samples of weight 0 change nothing (the mean over all when every weight is 1)."""
    return (weights * values).sum() / weights.sum().clamp(min=1e-8)


class PPOBatch(NamedTuple):
    """n samples for one PPO update; member 0 of the critic's set is the acting agent."""

    features: Tensor  # (n, F) actor input
    critic_features: Tensor  # (n, M, F)
    critic_valid: Tensor  # (n, M) bool
    actions: Tensor  # (n,) long
    old_log_probs: Tensor  # (n,)
    returns: Tensor  # (n,) lambda-returns, the critic's targets
    advantages: Tensor  # (n,) normalised if configured
    available: Tensor | None  # (n, n_actions) bool: the actions the agent could take, where the world restricts them
    weights: Tensor  # (n,) how much each sample counts: 1 on real data; in imagination the predicted probability
    # that the episode is still going at the sample's step, so nothing after a predicted end trains


class PPO:
    """One agent's actor, critic and their optimisers; `make_batch` turns trajectories into a PPOBatch,
    `update` runs the PPO epochs on it. The entropy weight is state: it decays after every actor step."""

    def __init__(self, feature_dim: int, n_actions: int, config: PPOConfig, seed: int,
                 device: torch.device | str = "cpu", classes: Sequence[int] = ()) -> None:
        """Features are (..., feature_dim); with `classes`, their first len(classes) entries are class indices of
        one-hot groups (MAMBA's compact [z, h])."""
        self.config = config
        self.actor = Actor(feature_dim, n_actions, config, seed, classes).to(device)
        self.critic = Critic(feature_dim, config, seed + 1, classes).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr,
                                                weight_decay=config.actor_weight_decay)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.entropy_coef = config.entropy_coef

    @torch.no_grad()
    def make_batch(self, features: Tensor, valid: Tensor, actions: Tensor, rewards: Tensor, continues: Tensor,
                   behaviour_log_probs: Tensor | None = None, available: Tensor | None = None,
                   weights: Tensor | None = None) -> PPOBatch:
        """From trajectories of n = H * B samples: features (H + 1, B, M, F) of every member at states 0..H
        (member 0 acts), valid (B, M) bool, member 0's actions (H, B) long, rewards (H, B) and probabilities
        of going on (H, B) after each action (1 - terminated for real data). The ratio's denominator is
        `behaviour_log_probs` (H, B), the log-probabilities the actions had when they were taken, where given;
        else the current actor's (right when it took the actions, as in imagination). `available` (H, B,
        n_actions) bool: the actions member 0 could take; `weights` (H, B): how much each sample counts
        (default 1)."""
        values = self.critic(features, valid)  # (H + 1, B)
        returns = lambda_returns(rewards, values, self.config.gamma * continues, self.config.lam)
        advantages = returns - values[:-1]
        weights = torch.ones_like(rewards) if weights is None else weights
        if self.config.normalise_advantages:  # over the samples that count, as much as they count
            mean = weighted_mean(advantages, weights)
            variance = (weights * (advantages - mean) ** 2).sum() / (weights.sum() - 1).clamp(min=1)
            advantages = (advantages - mean) / (variance.sqrt() + self.config.advantage_eps)
        own = features[:-1, :, 0]
        old_log_probs = (behaviour_log_probs if behaviour_log_probs is not None else
                         self.actor(own, available).log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1))
        return PPOBatch(own.flatten(0, 1), features[:-1].flatten(0, 1), valid.expand(*actions.shape, -1).flatten(0, 1),
                        actions.flatten(), old_log_probs.flatten(), returns.flatten(), advantages.flatten(),
                        None if available is None else available.flatten(0, 1), weights.flatten())

    def update(self, batch: PPOBatch, generator: torch.Generator) -> dict[str, float]:
        """`epochs` passes over shuffled minibatches: actor step, entropy decay, critic step. Returns means over
        the minibatches of the losses, entropy, approximate KL and clip fraction, and the entropy weight."""
        config, n = self.config, len(batch.actions)
        names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        per_step: list[Tensor] = []  # one row per minibatch, read back once at the end (no device sync per step)
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator, device=generator.device)
            for start in range(0, n, config.minibatch_size):
                idx = order[start:start + config.minibatch_size]
                weights = batch.weights[idx]
                available = None if batch.available is None else batch.available[idx]
                log_probs_all = self.actor(batch.features[idx], available).log_softmax(-1)
                log_probs = log_probs_all.gather(-1, batch.actions[idx].unsqueeze(-1)).squeeze(-1)
                policy_loss = clipped_policy_loss(log_probs, batch.old_log_probs[idx], batch.advantages[idx],
                                                  config.clip, weights)
                entropy = weighted_mean(-(log_probs_all.exp() * log_probs_all).sum(-1), weights)
                self._step(self.actor_optimizer, self.actor, policy_loss - self.entropy_coef * entropy)
                self.entropy_coef *= config.entropy_decay

                values = self.critic(batch.critic_features[idx], batch.critic_valid[idx])
                value_loss = 0.5 * weighted_mean((values - batch.returns[idx]).pow(2), weights)
                self._step(self.critic_optimizer, self.critic, value_loss)

                with torch.no_grad():
                    log_ratio = log_probs - batch.old_log_probs[idx]
                    ratio = log_ratio.exp()
                    per_step.append(torch.stack([policy_loss, value_loss, entropy, (ratio - 1.0 - log_ratio).mean(),
                                                 ((ratio - 1.0).abs() > config.clip).float().mean()]))
        means = torch.stack(per_step).mean(0).tolist()
        return {**dict(zip(names, means)), "entropy_coef": self.entropy_coef,
                "returns_mean": float(batch.returns.mean())}

    def _step(self, optimizer: torch.optim.Optimizer, module: nn.Module, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)  # clip before the step
        optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "entropy_coef": self.entropy_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.entropy_coef = float(state["entropy_coef"])
