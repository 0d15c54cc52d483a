"""One rank's memory at the default config (M = 1000, replay buffer 1e6, SAC 256-256), part by part.

Run with 3 ranks, so the default ring gives every rank 2 neighbours as on any ring of >= 3 ranks:
    mpiexec -n 3 python benchmarks/memory.py [--set model.num_inducing=500 ...] [--json]

Every rank builds a real `Node` from the default config (plus --set overrides) and brings it to its
steady-state size: the real replay buffer filled to capacity, 5000 transitions in the model's
statistics, one model update (gossip of the statistics, posterior, imagined rollouts), one step of
SAC updates (gradients and Adam moments exist from then on). Each part is then measured as the
bytes of the distinct tensor storages and numpy buffers it holds. The reference, in the same
process: the memory right after `import torch, gpytorch`, before anything else is imported.
Process figures come from the kernel: peak RSS (getrusage), and USS (private pages) and shared
pages from /proc/self/smaps_rollup. N ranks on one machine need about N x USS + the shared pages once.
"""

from __future__ import annotations

import resource


def process_memory() -> dict[str, int]:
    """This process's memory in bytes: peak_rss (getrusage), rss, uss (private), shared (from smaps_rollup)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) * 1024
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss": fields["Rss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"],
            "shared": fields["Shared_Clean"] + fields["Shared_Dirty"]}


import gpytorch  # noqa: E402,F401  (the baseline: nothing but torch and gpytorch imported)
import torch  # noqa: E402

BASELINE = process_memory()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import env as world  # noqa: E402
from odmar_mpi.config import ConfigError, load_config, validate  # noqa: E402
from odmar_mpi.model import statistics  # noqa: E402
from odmar_mpi.node import Node  # noqa: E402

GiB = 1 << 30
MODEL_TRANSITIONS = 5000  # the default warm-up length
FILL_CHUNK = 100_000  # rows per add_batch while filling the replay buffer
OWN_MODULES = ("odmar_mpi", "env")  # objects whose attributes are followed; library objects are not


def owned_bytes(*objects: object, exclude: tuple[object, ...] = ()) -> int:
    """Bytes of the distinct tensor storages and numpy buffers reachable from `objects`, not from `exclude`.

    Follows containers, our own objects' attributes, torch modules (parameters, buffers) and
    optimisers (state); not gradients (count them by passing them). Memory shared by several
    views, or by a tensor and an array (torch.from_numpy), is counted once.
    """
    seen_data: set[int] = set()
    visited: set[int] = set()
    total = 0

    def walk(roots: tuple[object, ...], count: bool) -> None:
        nonlocal total
        stack = list(roots)
        while stack:
            obj = stack.pop()
            if id(obj) in visited:
                continue
            visited.add(id(obj))
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                address, size = storage.data_ptr(), storage.nbytes()
            elif isinstance(obj, np.ndarray):
                while isinstance(obj.base, np.ndarray):
                    obj = obj.base
                address, size = obj.__array_interface__["data"][0], obj.nbytes
            else:
                if isinstance(obj, torch.nn.Module):
                    stack += [*obj.parameters(), *obj.buffers()]
                elif isinstance(obj, torch.optim.Optimizer):
                    stack += list(obj.state.values())
                elif isinstance(obj, dict):
                    stack += list(obj.values())
                elif isinstance(obj, (list, tuple)):
                    stack += list(obj)
                elif type(obj).__module__.startswith(OWN_MODULES) and hasattr(obj, "__dict__"):
                    stack += list(vars(obj).values())
                continue
            if size and address not in seen_data:
                seen_data.add(address)
                total += size if count else 0

    walk(exclude, count=False)
    walk(objects, count=True)
    return total


def steady_state_node(overrides: tuple[str, ...], comm: MPI.Comm,
                      stages: list[tuple[str, dict[str, int]]], seed: int = 0) -> Node:
    """A Node of the given config at its steady-state memory: full replay buffer, a posterior, Adam states.

    Collective. Appends (stage, process_memory()) to `stages` after each step of the build.
    """
    cfg = load_config(None, overrides)
    validate(cfg, comm.Get_size())
    stages.append(("+ project imports, MPI", process_memory()))
    node = Node(cfg, comm, cfg.comm.graph(comm.Get_size(), cfg.run.seed), run_dir=Path("."))
    stages.append(("+ Node built", process_memory()))
    learner = node.learner
    rng = np.random.default_rng(seed + node.rank)
    filled = 0
    while filled < learner.real.capacity:
        n = min(FILL_CHUNK, learner.real.capacity - filled)
        obs = torch.as_tensor(rng.uniform(world.WORLD_LOW, world.WORLD_HIGH, (n, world.OBS_DIM)), dtype=torch.float32)
        actions = torch.as_tensor(rng.uniform(-1.0, 1.0, (n, world.ACT_DIM)), dtype=torch.float32)
        learner.real.add_batch(obs, actions, torch.zeros(n), (obs + actions).clamp(world.WORLD_LOW, world.WORLD_HIGH),
                            torch.zeros(n))
        filled += n
    if hasattr(learner, "model"):
        states = rng.uniform(world.WORLD_LOW, world.WORLD_HIGH, (MODEL_TRANSITIONS, world.OBS_DIM))
        actions = rng.uniform(-1.0, 1.0, (MODEL_TRANSITIONS, world.ACT_DIM))
        learner.model.observe(np.hstack([states, actions]), actions)
        learner.model_step(cfg.run.warmup_steps, node.gossip)
    stages.append(("+ replay full, model update", process_memory()))
    learner.update(cfg.run.warmup_steps)
    stages.append(("+ SAC updates (steady state)", process_memory()))
    return node


def measure(node: Node) -> list[tuple[str, int]]:
    """(part, bytes) for each part of one rank's state; the last row is whatever else the node holds."""
    learner = node.learner
    model, sac = getattr(learner, "model", None), learner.sac
    consensus = next(iter(node.gossip.pool.values()), None)
    gradients = [p.grad for group in sac.optimizer.param_groups for p in group["params"] if p.grad is not None]
    parts: list[tuple[str, tuple[object, ...], tuple[object, ...]]] = []  # (name, objects, excluded)
    if model is not None:
        prior = (model.chol_kzz, model.inducing, model.kernel)
        parts += [
            ("GP statistics J, h + pending rows", (model,), prior + (model.posterior,)),
            ("GP prior: chol(Kzz), inducing points", prior, ()),
            ("GP posterior: chol(I + J), mean", (model.posterior,), ()),
            # pack/unpack keep their upper-triangle index tensors in an lru_cache: this returns the cached pair.
            ("GP packing indices (cached)", (statistics._triangle(model.num_inducing, model.device),), ()),
            ("learner's packed copies (input, summed)", (learner.stats_buffer, learner.posterior_statistics), ()),
            (f"consensus: 3 iterates + {len(consensus.neighbours)} receive + scratch", (consensus,), ()),
            (f"imagined buffer ({learner.imagined.capacity} rows)", (learner.imagined,), ()),
        ]
    parts += [
        (f"real replay buffer ({learner.real.capacity:.0e} rows)", (learner.real,), ()),
        ("SAC actor, twin critics, targets", (sac.actor, sac.critic, sac.critic_target, sac.log_alpha), ()),
        ("SAC gradients + Adam moments", (gradients, sac.optimizer), ()),
    ]
    rows = [(name, owned_bytes(*objects, exclude=exclude)) for name, objects, exclude in parts]
    listed = tuple(obj for _, objects, _ in parts for obj in objects)
    rows.append(("rest of the node (holdout, world, records, gossip)", owned_bytes(node, exclude=listed)))
    return rows


def report(rows: list[tuple[str, int]], stages: list[tuple[str, dict[str, int]]], ranks: int,
           overrides: tuple[str, ...], peak_over_ranks: int) -> dict:
    """Rank 0's figures, plus the many-ranks estimate N x USS + shared (shared pages counted once)."""
    after = stages[-1][1]
    return {
        "ranks": ranks, "overrides": list(overrides), "parts_bytes": dict(rows),
        "data_bytes": sum(size for _, size in rows), "stages": dict(stages),
        "peak_rss_minus_baseline": after["peak_rss"] - BASELINE["peak_rss"],
        "uss_minus_baseline": after["uss"] - BASELINE["uss"], "peak_rss_max_over_ranks": peak_over_ranks,
        "ranks_on_24_GiB": int((24 * GiB - after["shared"]) // after["uss"]),
        "bytes_for_64_ranks": 64 * after["uss"] + after["shared"],
    }


def table(result: dict) -> str:
    """The result of `report` as the table rank 0 prints (MB = 1e6 bytes)."""
    mb = 1e6
    lines = [f"memory of one rank ({result['ranks']} ranks; overrides: {' '.join(result['overrides']) or 'none'})",
             f"  {'part':<48}{'MB':>9}"]
    lines += [f"  {name:<48}{size / mb:>9.1f}" for name, size in result["parts_bytes"].items()]
    lines += [f"  {'sum of the parts':<48}{result['data_bytes'] / mb:>9.1f}",
              f"  {'process (MB)':<40}{'peak RSS':>9}{'RSS':>9}{'USS':>9}{'shared':>9}"]
    for stage, m in result["stages"].items():
        lines.append(f"  {stage:<40}{m['peak_rss'] / mb:>9.0f}{m['rss'] / mb:>9.0f}{m['uss'] / mb:>9.0f}"
                     f"{m['shared'] / mb:>9.0f}")
    lines += [
        f"  steady state - baseline: peak RSS +{result['peak_rss_minus_baseline'] / mb:.0f} MB, USS "
        f"+{result['uss_minus_baseline'] / mb:.0f} MB, of which the parts above {result['data_bytes'] / mb:.0f} MB "
        f"(the rest: modules imported on first use, MPI, heap kept after transients); "
        f"largest peak RSS over ranks {result['peak_rss_max_over_ranks'] / mb:.0f} MB",
        f"  N ranks on one machine ~ N x USS + shared: 64 ranks {result['bytes_for_64_ranks'] / GiB:.1f} GiB; "
        f"{result['ranks_on_24_GiB']} ranks fit in 24 GiB",
    ]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Config override, as for odmar_mpi.run (e.g. --set model.num_inducing=500). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Also print the results as one JSON object.")
def main(overrides: tuple[str, ...], as_json: bool) -> None:
    """Bytes per part of one rank at steady state, and the process's memory against a torch + gpytorch baseline."""
    comm = MPI.COMM_WORLD
    stages = [("import torch, gpytorch (baseline)", BASELINE)]
    try:
        node = steady_state_node(overrides, comm, stages)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    rows = measure(node)
    peak_over_ranks = comm.allreduce(stages[-1][1]["peak_rss"], op=MPI.MAX)
    if comm.Get_rank() == 0:
        result = report(rows, stages, comm.Get_size(), overrides, peak_over_ranks)
        print(table(result), flush=True)
        if as_json:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
