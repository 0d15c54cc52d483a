"""Training-loop throughput per agent at the ODMAR setting, and the original's hot spots in the same run.

    mpiexec -n 5 python benchmarks/train_loop.py [--config configs/odmar_beta0.01.toml] [--steps 100] [--json]

Every rank runs the real `Node` (warm-up shortened to 300 steps, then --steps training steps with the
config's updates per step, M, consensus and imagination). Rank 0 then times, on the same sizes, the
two places where the original research code spent its time, against ours:
  - batch assembly: a deque of per-transition tuples, `random.sample`, one tensor built per field
    from Python lists (original) vs `sample_mixed` on preallocated buffers (ours), per SAC update;
  - imagination: a loop over the 256 start states and H steps with one model call and one deep copy
    of the environment per sample to get the reward (original) vs one batched call per step (ours).
It prints steps/s per agent, the split of time across phases, and each hot spot's ratio; the
`original_style_steps_per_s` estimate swaps our hot-spot costs for the reference ones in our
measured step time (the gradient arithmetic of the SAC update is counted once, equal in both).
"""

from __future__ import annotations

import copy
import os
import json
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import click
import numpy as np
import torch
from mpi4py import MPI

from odmar_mpi.config import load_config
from odmar_mpi.node import Node
from odmar_mpi.policy.imagination import imagine_rollouts
from odmar_mpi.policy.replay import sample_mixed

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def original_batch(transitions: deque, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The original's minibatch: sample tuples, then build each tensor from a Python list."""
    sample = random.sample(transitions, batch_size)
    return tuple(torch.tensor(np.array([t[i] for t in sample]), dtype=torch.float32) for i in range(5))


def original_imagination(node: Node, starts: torch.Tensor, horizon: int, beta: float) -> list[tuple]:
    """The original's rollouts: per start state and step, one model call and a deep-copied env for the reward."""
    learner = node.learner
    out = []
    for state in starts:
        s = state[None]
        for _ in range(horizon):
            action = learner.sac.act_batch(s)
            next_mean, std = learner.predict_next_state(s, action)
            scratch = copy.deepcopy(node.world)
            scratch.position[:] = s[0].numpy()
            scratch.t = 0
            _, reward, _ = scratch.step(action[0].numpy())
            out.append((s, action, reward + beta * float(std.sum()), next_mean))
            s = next_mean
    return out


@click.command()
@click.option("--config", "config_path", default=str(ROOT / "configs" / "odmar_beta0.01.toml"), show_default=True)
@click.option("--steps", default=100, show_default=True, help="Training steps timed after the warm-up.")
@click.option("--repeats", default=5, show_default=True, help="Repeats of each hot-spot timing (median).")
@click.option("--json", "as_json", is_flag=True)
def main(config_path: str, steps: int, repeats: int, as_json: bool) -> None:
    comm = MPI.COMM_WORLD
    warmup = 300
    cfg = load_config(config_path, [f"run.warmup_steps={warmup}", "run.train_steps=0", "run.eval_every=1000000",
                                    "run.checkpoint_every=0", "run.progress_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(cfg, comm, cfg.comm.graph(comm.Get_size(), cfg.run.seed), run_dir=Path(tmp) / f"bench{comm.Get_rank()}")
        node.train()  # warm-up, first model update and imagination
        before = dict(node.telemetry.clock.seconds)
        node.cfg.run.train_steps = steps
        start = time.perf_counter()
        node.train()
        elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)  # benchmark-only collective
    phases = {k: node.telemetry.clock.seconds[k] - before[k] for k in before}
    phases = {k: comm.allreduce(v, op=MPI.SUM) / comm.Get_size() for k, v in phases.items()}
    if comm.Get_rank() != 0:
        return

    torch.set_num_threads(cfg.run.torch_threads)
    m, sac = cfg.model, cfg.sac
    learner = node.learner
    transitions = deque(maxlen=sac.buffer_size)
    for _ in range(len(learner.real)):
        b = learner.real.sample(1)
        transitions.append(tuple(t[0].numpy() for t in b))
    ours_batch = median_seconds(lambda: sample_mixed(learner.real, learner.imagined, sac.batch_size, sac.real_ratio),
                                repeats * 20)
    ref_batch = median_seconds(lambda: original_batch(transitions, sac.batch_size), repeats * 20)
    starts = learner.real.sample_states(m.rollout_batch)
    ours_imag = median_seconds(lambda: imagine_rollouts(learner.predict_next_state, node.world.reward_fn, learner.sac,
                                                        starts, m.rollout_length, m.beta), repeats)
    ref_imag = median_seconds(lambda: original_imagination(node, starts, m.rollout_length, m.beta), max(1, repeats // 2))

    step_s = elapsed / steps
    saved_per_step = sac.updates_per_step * (ref_batch - ours_batch) + (ref_imag - ours_imag) / m.update_every
    result = {
        "agents": comm.Get_size(), "cores": len(os.sched_getaffinity(0)), "steps": steps,
        "updates_per_step": sac.updates_per_step, "num_inducing": m.num_inducing,
        "steps_per_s_per_agent": steps / elapsed,
        "phase_share": {k: v / sum(phases.values()) for k, v in phases.items()},
        "batch_ms": {"ours": ours_batch * 1e3, "original_style": ref_batch * 1e3, "ratio": ref_batch / ours_batch},
        "imagination_ms": {"ours": ours_imag * 1e3, "original_style": ref_imag * 1e3, "ratio": ref_imag / ours_imag},
        "original_style_steps_per_s": 1.0 / (step_s + saved_per_step),
        "speedup_vs_original_style": (step_s + saved_per_step) / step_s,
    }
    if as_json:
        print(json.dumps(result))
        return
    print(f"{result['agents']} agents on {result['cores']} cores, {steps} training steps, "
          f"{sac.updates_per_step} SAC updates/step, M = {m.num_inducing}")
    print(f"  {result['steps_per_s_per_agent']:.2f} env steps/s per agent (ours); "
          f"original-style estimate {result['original_style_steps_per_s']:.2f} -> x{result['speedup_vs_original_style']:.1f}")
    print("  time per phase: " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in result["phase_share"].items()))
    for name in ("batch_ms", "imagination_ms"):
        r = result[name]
        print(f"  {name[:-3]:<12} ours {r['ours']:8.3f} ms   original-style {r['original_style']:9.3f} ms   x{r['ratio']:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
