"""Time one SAC update (batch 256, 256-256 MLPs, 1 torch thread) against a straightforward reference.

The reference is the usual two-separate-critic SAC (CleanRL's `sac_continuous_action.py` shape):
two critic MLPs and two target MLPs, three optimisers, critic then actor then temperature steps
with their own backward passes, and a Python-loop Polyak update. Ours: both critics as one
batched network, one backward and one (fused) Adam step, `_foreach_lerp_` targets. The two are
timed alternately in the same run (median of rounds) in CPU seconds of this process, because the
machine is shared and wall time would count other processes' turns.
Both are bounded below by their matmuls: an update does 16 matmuls of the hidden-by-hidden size
(critics: 2 forward + 4 backward, target critics 2, actor on next states 1, actor 1 + 2 backward,
critics for the actor loss 2 forward + 2 input-gradient), printed as the "matmul floor".
Also times `ReplayBuffer.add` (numpy staging) against writing each field with `tensor.copy_`.

Run: .venv/bin/python benchmarks/sac_update.py [--updates 200 --rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from odmar_mpi.policy import SAC, Batch, ReplayBuffer, SACConfig
from odmar_mpi.policy.networks import Actor

OBS_DIM, ACT_DIM, BATCH = 2, 2, 256


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class ReferenceSAC:
    """Straightforward SAC: separate critics, separate optimisers and backward passes, looped Polyak."""

    def __init__(self, config: SACConfig, seed: int) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.actor = Actor(OBS_DIM, ACT_DIM, tuple(config.hidden), torch.Generator().manual_seed(seed))
        self.critics = [mlp(OBS_DIM + ACT_DIM, 1, config.hidden) for _ in range(2)]
        self.targets = [mlp(OBS_DIM + ACT_DIM, 1, config.hidden) for _ in range(2)]
        for critic, target in zip(self.critics, self.targets):
            target.load_state_dict(critic.state_dict())
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_opt = torch.optim.Adam([p for c in self.critics for p in c.parameters()], lr=config.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)

    def q(self, nets: list[nn.Sequential], obs: torch.Tensor, actions: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([obs, actions], -1)
        return [net(x).squeeze(-1) for net in nets]

    def update(self, batch: Batch) -> None:
        cfg = self.config
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(batch.next_obs, self.generator)
            next_q = torch.min(*self.q(self.targets, batch.next_obs, next_actions)) - alpha * next_log_prob
            td_target = batch.rewards + cfg.gamma * (1.0 - batch.terminated) * next_q
        q1, q2 = self.q(self.critics, batch.obs, batch.actions)
        critic_loss = F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        actions, log_prob = self.actor.sample(batch.obs, self.generator)
        actor_loss = (alpha * log_prob - torch.min(*self.q(self.critics, batch.obs, actions))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = (-self.log_alpha.exp() * (log_prob.detach() + -ACT_DIM)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        for critic, target in zip(self.critics, self.targets):
            for param, target_param in zip(critic.parameters(), target.parameters()):
                target_param.data.copy_(cfg.tau * param.data + (1 - cfg.tau) * target_param.data)


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def time_alternately(candidates: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of seconds per call, candidates interleaved within each round."""
    for fn in candidates.values():
        seconds_per_call(fn, max(1, calls // 10))  # warm-up: allocator, Adam state
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(seconds_per_call(fn, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def naive_add(storage: list[torch.Tensor], slot: int, fields: list[np.ndarray]) -> None:
    for column, value in zip(storage, fields):
        column[slot].copy_(torch.as_tensor(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200, help="updates per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = SACConfig()
    buffer = ReplayBuffer(100_000, OBS_DIM, ACT_DIM, "cpu", seed=0)
    rng = np.random.default_rng(0)
    n = 10_000
    obs = torch.as_tensor(rng.uniform(-10, 10, (n, OBS_DIM)), dtype=torch.float32)
    actions = torch.as_tensor(rng.uniform(-1, 1, (n, ACT_DIM)), dtype=torch.float32)
    buffer.add_batch(obs, actions, torch.randn(n), obs + actions, torch.zeros(n))
    batch = buffer.sample(BATCH)
    ours, reference = SAC(OBS_DIM, ACT_DIM, config, "cpu", seed=0), ReferenceSAC(config, seed=0)

    hidden = config.hidden[-1]
    left, right = torch.randn(BATCH, hidden), torch.randn(hidden, hidden)
    times = time_alternately({"ours": lambda: ours.update(batch), "reference": lambda: reference.update(batch),
                              "matmul": lambda: left @ right}, args.updates, args.rounds)
    print(f"SAC update, batch {BATCH}, hidden {config.hidden}, 1 thread (median of {args.rounds} x {args.updates}):")
    print(f"  ours (batched twin critic, one backward, one Adam, foreach Polyak): {times['ours'] * 1e3:7.3f} ms")
    print(f"  reference (two critics, three backward/steps, looped Polyak):      {times['reference'] * 1e3:7.3f} ms")
    print(f"  reference / ours = {times['reference'] / times['ours']:.2f}x")
    print(f"  matmul floor: 16 x ({BATCH}x{hidden} @ {hidden}x{hidden}) = {16 * times['matmul'] * 1e3:7.3f} ms")

    fields = [rng.uniform(-10, 10, OBS_DIM), rng.uniform(-1, 1, ACT_DIM), np.float64(0.5),
              rng.uniform(-10, 10, OBS_DIM), np.float64(0.0)]
    naive_storage = [torch.zeros(100_000, OBS_DIM), torch.zeros(100_000, ACT_DIM), torch.zeros(100_000),
                     torch.zeros(100_000, OBS_DIM), torch.zeros(100_000)]
    adds = 20_000
    add_times = time_alternately({
        "staged": lambda: buffer.add(fields[0], fields[1], 0.5, fields[3], False),
        "naive": lambda: naive_add(naive_storage, 7, fields),
    }, adds, args.rounds)
    sample_time = time_alternately({"sample": lambda: buffer.sample(BATCH)}, 2_000, args.rounds)["sample"]
    print(f"ReplayBuffer.add: {add_times['staged'] * 1e6:.2f} us (numpy staging) vs "
          f"{add_times['naive'] * 1e6:.2f} us (tensor.copy_ per field); sample({BATCH}): {sample_time * 1e6:.1f} us")


if __name__ == "__main__":
    main()
