"""How much memory a configuration needs per rank and per node, before anything is allocated.

`estimate_memory(cfg, ranks, max_degree)` adds up, from the configuration alone, what one rank
holds at its steady state (the arrays and tensors the node builds, with the sizes of the code that
builds them), the largest transient on top (a model update, a checkpoint or a resume), and the runtime every
rank pays whatever the config (Python, torch, gpytorch, numpy, h5py, mpi4py and the modules they
load; measured on this project's machine). `check_fits` refuses what does not fit a node and names
the knob to turn; `format_memory` prints the breakdown. Pure arithmetic on Python ints: no MPI, no
torch, nothing allocated, so `check` can run it on a login node for any absurd value.

Where the numbers come from (M inducing points, d = obs_dim GP outputs, D = obs_dim + act_dim GP
inputs, P = M (M + 1) / 2 + M d the packed statistics, W = 2 obs_dim + act_dim + 2 floats per
transition; float64 = 8 bytes, float32 = 4):

- GP statistics: J (M x M), h (M x d), the pending chunk of 1024 transitions (x and y), float64.
- GP prior and posterior: chol(Kzz) and chol(I + J) (M x M each), inducing points, whitened mean.
- GP packing: the cached upper-triangle index pair (2 x P int64) and the learner's two packed
  copies (gossip input and the summed statistics of the posterior, P float64 each).
- consensus buffers: 3 iterates + one receive buffer per neighbour (max_degree) + scratch, each
  P float64 (plus the tol-mode window); and the scalar gossip (StepGossip/Flood, O(ranks x diameter)).
- replay: the real buffer, `sac.buffer_size` x W float32, preallocated; the imagined buffer,
  `rollout_batch * rollout_length * imagined_keep` rows.
- SAC networks: actor, twin critics and their targets, gradients, Adam's two moments (float32).
- transient peak, the largest of: a model update (the unpacked J, I + J, the identity and the new
  Cholesky factor while the old one lives: 4 M^2 float64, and a packed copy); a prediction over the
  1000 held-out rows (3 x 1000 x M float64); a resume (the state read back and verified: the replay
  rows, J, SAC and Adam, alive while the posterior is refitted: 3 M^2 more; a checkpoint write needs
  less, its copies without the refit, the writer's buffers under 1 MB); a SAC update's activations.
- allocator slack: glibc serves M x M float64 blocks below its 32 MiB mmap limit (M < 2048) from
  the heap and keeps them after the transients: 2 M^2 float64 more at the peak, measured at M = 2000
  (none with MALLOC_MMAP_THRESHOLD_ set below M^2 x 8 bytes).
- runtime: private memory (USS) of a rank whose data are tiny, and the shared library pages a node
  holds once for all its ranks (RUNTIME_PRIVATE, RUNTIME_SHARED below).

Calibration (3 ranks on a ring, MPICH, torch 2.13 CPU, Python 3.11, glibc; each rank built as
benchmarks/memory.py builds it: replay buffer full, 5000 transitions in the model, a model update,
SAC updates; then a checkpoint, its verification and a resume from it). Largest peak RSS over the
ranks against `total + shared`: M = 16 and a 1000-row buffer 387 MB measured / 401 MB estimated
(+3.7 %); M = 500: 481 / 493 (+2.5 %); M = 1000: 565 / 580 (+2.8 %); M = 2000: 947 / 929 (-1.9 %);
M = 3000: 1395 / 1365 (-2.2 %); run.algorithm = "sac": 445 / 464 (+4.1 %); replay buffer 1e6 rows
except where said.

For `run.algorithm = "sac"` there is no GP, no packed statistics and no imagined buffer.
With `run.device = "cuda"` the torch tensors (GP, replay, networks) live in GPU memory instead; the
host figures are then an overestimate of host memory, and the CUDA runtime is not included.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

F64, F32, I64 = 8, 4, 8
PENDING_CHUNK = 1024  # SparseGP(chunk_size=1024): transitions buffered before they are folded into J, h
STAGE_ROWS = 1024  # the replay buffers' numpy staging block (policy/rows.py)
HOLDOUT_ROWS = 1000  # held-out transitions of the model's error measurement
WRITE_BUFFERS = 1_000_000  # HDF5 and file-driver buffers while writing a checkpoint (measured: 0.7 MB)
GLIBC_MMAP_MAX = 32 << 20  # glibc's largest dynamic mmap threshold: bigger blocks always go back to the system
OBS_DIM, ACT_DIM = 2, 2  # the reward-collection world (env.OBS_DIM, env.ACT_DIM; tests check they agree)

# Measured with benchmarks/memory.py's method (USS and shared pages from /proc/self/smaps_rollup) on a
# rank at steady state whose data are negligible (M = 16, 1000-row replay buffer: USS 254 to 259 MB with
# 11 MB of data and transients, shared 128 to 130 MB), then checked against the peaks above.
RUNTIME_PRIVATE = 260_000_000
"""Private memory of one rank besides its data: interpreter, imported modules, allocator overhead, MPI."""
RUNTIME_SHARED = 130_000_000
"""Pages of shared libraries (torch, MKL/OpenBLAS, MPI): held once per node however many ranks it runs."""


@dataclass(frozen=True)
class MemoryInputs:
    """What the estimate depends on, taken from the configuration (and the graph)."""

    algorithm: str
    num_inducing: int
    buffer_size: int
    imagined_rows: int
    hidden: tuple[int, ...]
    batch_size: int
    ranks: int
    max_degree: int
    diameter: int
    tol_mode: bool
    device: str
    obs_dim: int = OBS_DIM
    act_dim: int = ACT_DIM
    mmap_threshold: int | None = None
    """MALLOC_MMAP_THRESHOLD_ of the ranks (bytes), if set: blocks from this size on go back to the system."""

    @property
    def uses_model(self) -> bool:
        return self.algorithm == "odmar"


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    knob: str
    """The setting that shrinks this part (or 'ranks per node' for the runtime)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank by part (`parts`, adding up to `total`), and the shared pages a node holds once."""

    inputs: MemoryInputs
    parts: tuple[Part, ...]
    shared: int = RUNTIME_SHARED
    by_name: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {part.name: part.bytes for part in self.parts})

    @property
    def total(self) -> int:
        """Bytes one rank needs at its peak, shared library pages not included."""
        return sum(part.bytes for part in self.parts)

    def node_total(self, ranks_per_node: int) -> int:
        """Bytes a node needs for `ranks_per_node` ranks: each rank's total, plus the shared pages once."""
        return ranks_per_node * self.total + self.shared

    def largest(self) -> Part:
        return max(self.parts, key=lambda part: part.bytes)


# ------------------------------------------------------------------------------------------- estimate


def packed_size(num_inducing: int, out_dim: int) -> int:
    """Floats in the packed GP statistics: M (M + 1) / 2 + M d (as odmar_mpi.model.statistics.packed_size)."""
    return num_inducing * (num_inducing + 1) // 2 + num_inducing * out_dim


def transition_bytes(obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> int:
    """One replay row: [obs | action | reward | next_obs | terminated] in float32."""
    return (2 * obs_dim + act_dim + 2) * F32


def replay_bytes(rows: int, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> int:
    """A ReplayBuffer of `rows` rows: the float32 storage and its staging block."""
    return (rows + min(STAGE_ROWS, rows)) * transition_bytes(obs_dim, act_dim)


def network_parameters(hidden: tuple[int, ...], obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> tuple[int, int]:
    """(actor, twin critic) parameter counts: actor obs -> hidden -> 2 act_dim; two critics obs+act -> hidden -> 1."""

    def mlp(widths: list[int]) -> int:
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))

    return mlp([obs_dim, *hidden, 2 * act_dim]), 2 * mlp([obs_dim + act_dim, *hidden, 1])


def gp_parts(m: int, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> dict[str, int]:
    """Bytes of the sparse GP's persistent tensors by part, as SparseGP and the learner allocate them."""
    d, inputs, packed = obs_dim, obs_dim + act_dim, packed_size(m, obs_dim)
    return {
        "statistics": (m * m + m * d + PENDING_CHUNK * (inputs + d)) * F64,  # J, h, pending x and y
        "prior_posterior": (2 * m * m + m * inputs + m * d) * F64,  # chol Kzz, chol(I + J), inducing, mean
        "packing": 2 * (m * (m + 1) // 2) * I64 + 2 * packed * F64,  # index pair; gossip input, summed copy
    }


def mamba_estimate(cfg: Any, ranks: int, max_degree: int, obs_dim: int, n_actions: int = 5,
                   masked: bool = False) -> MemoryEstimate:
    """MAMBA or IPPO on a coupled world (observations of `obs_dim`, `n_actions` actions, `masked`: the world
    restricts them): sequence replay (exact), networks with gradients and Adam, and the largest transient
    (imagination of the neighbourhood), from the layer sizes; approximate to about 20 %."""
    wm, ppo = cfg.world_model, cfg.ppo
    slots = max_degree if cfg.mamba.communication == "neighbours" else 0
    c, k, h = wm.n_categoricals, wm.n_classes, wm.deterministic
    features = c * k + h
    mamba = cfg.run.algorithm == "mamba"
    in_dim = features if mamba else obs_dim
    actor = in_dim * ppo.actor_hidden + (ppo.actor_layers - 1) * ppo.actor_hidden ** 2 + ppo.actor_hidden * n_actions
    critic = in_dim * ppo.critic_hidden + 7 * ppo.critic_hidden ** 2
    model = (obs_dim * wm.hidden + 2 * wm.hidden ** 2 + wm.hidden * wm.embed  # encoder
             + (n_actions + c * k) * wm.model_hidden + 6 * wm.comm_layers * wm.model_hidden ** 2  # tokens, attention
             + 3 * (wm.model_hidden * h + h * h) + h * wm.model_hidden + wm.model_hidden * c * k  # GRU, prior
             + (h + wm.embed) * wm.hidden + wm.hidden * c * k  # posterior
             + features * wm.hidden + 2 * wm.hidden ** 2 + wm.hidden * obs_dim  # decoder
             + 2 * (features * wm.head_hidden + (wm.head_layers - 1) * wm.head_hidden ** 2)) if mamba else 0
    parameters = actor + critic + model
    networks = 4 * parameters * F32  # parameters, gradients, Adam's two moments
    parts = [Part("actor-critic and world model, gradients, Adam", networks, "world_model.hidden / ppo.*_hidden")]
    if mamba:
        row = (obs_dim + 4 + slots * (2 + c + h) + (n_actions if masked else 0)) * F32  # SequenceBuffer's row
        rows = cfg.mamba.buffer_size
        parts.append(Part(f"sequence replay ({rows:,} steps)", (rows + min(STAGE_ROWS, rows)) * row,
                          "mamba.buffer_size"))
        starts = cfg.mamba.batch_size * cfg.mamba.sequence_length
        imagined = 3 * starts * (1 + slots) * (wm.horizon + 1) * (features + wm.model_hidden) * F32
        parts.append(Part("transient peak (imagination of the neighbourhood)", imagined, "mamba.batch_size"))
    parts.append(Part("parameter averaging buffers (3 iterates + receive)", (4 + max_degree) * parameters * F64,
                      "world_model.hidden"))
    parts.append(Part("runtime: Python, torch, MPI (private)", RUNTIME_PRIVATE, "ranks per node"))
    inputs = MemoryInputs(algorithm=cfg.run.algorithm, num_inducing=0, buffer_size=cfg.mamba.buffer_size,
                          imagined_rows=0, hidden=(), batch_size=cfg.mamba.batch_size, ranks=ranks,
                          max_degree=max_degree, diameter=0, tol_mode=False, device=str(cfg.run.device),
                          obs_dim=obs_dim, act_dim=1)
    return MemoryEstimate(inputs, tuple(parts))


def estimate_from(inputs: MemoryInputs) -> MemoryEstimate:
    """The estimate for explicit inputs (estimate_memory reads them from a config)."""
    m, obs_dim, act_dim = inputs.num_inducing, inputs.obs_dim, inputs.act_dim
    parts: list[Part] = []
    gp_knob = "model.num_inducing"
    if inputs.uses_model:
        gp = gp_parts(m, obs_dim, act_dim)
        window = inputs.diameter + 1 if inputs.tol_mode else 0
        consensus = ((3 + inputs.max_degree) * (packed_size(m, obs_dim) + window) + packed_size(m, obs_dim)) * F64
        parts += [
            Part("GP statistics: J, h, pending chunk", gp["statistics"], gp_knob),
            Part("GP prior and posterior: chol(Kzz), chol(I + J)", gp["prior_posterior"], gp_knob),
            Part("GP packing: triangle indices, 2 packed copies", gp["packing"], gp_knob),
            Part(f"consensus: 3 iterates + {inputs.max_degree} receive + scratch", consensus, gp_knob),
        ]
    # Per-step gossip window and buffers, and the scalar flood: ranks x (diameter + 1) x 2 floats, per neighbour.
    scalars = (inputs.max_degree + 1) * inputs.ranks * (inputs.diameter + 2) * 2 * F64
    parts.append(Part("scalar gossip (step rewards, floods)", scalars, "ranks"))
    imagined = replay_bytes(inputs.imagined_rows, obs_dim, act_dim) if inputs.uses_model else 0
    real = replay_bytes(inputs.buffer_size, obs_dim, act_dim)
    parts.append(Part(f"real replay buffer ({inputs.buffer_size:,} rows)", real, "sac.buffer_size"))
    if inputs.uses_model:
        parts.append(Part(f"imagined buffer ({inputs.imagined_rows:,} rows)", imagined, "model.rollout_batch"))
    actor, critic = network_parameters(inputs.hidden, obs_dim, act_dim)
    trained = actor + critic + 1  # + log alpha
    # parameters, target critics, gradients, Adam's exp_avg and exp_avg_sq
    networks = (trained + critic + 3 * trained) * F32
    parts.append(Part("SAC networks, targets, gradients, Adam", networks, "sac.hidden"))
    holdout = HOLDOUT_ROWS * (2 * obs_dim + act_dim) * F64 if inputs.uses_model else 0
    parts.append(Part("held-out transitions, world, records", holdout + 1_000_000, "-"))

    transients = transient_parts(inputs, real + imagined, networks)
    name, size = max(transients.items(), key=lambda item: item[1])
    knob = {"model update": gp_knob, "model prediction": gp_knob, "SAC update": "sac.batch_size",
            "resume: state read + refit": "sac.buffer_size" if not inputs.uses_model or real > 2 * m * m * F64 else gp_knob}[name]
    parts.append(Part(f"transient peak ({name})", size, knob))
    limit = GLIBC_MMAP_MAX if inputs.mmap_threshold is None else min(GLIBC_MMAP_MAX, inputs.mmap_threshold)
    if inputs.uses_model and m * m * F64 < limit:
        # glibc serves M x M blocks below its mmap limit from the heap and keeps them after free: measured
        # about two such matrices more at the peak (M = 2000) than the transients above account for.
        parts.append(Part("allocator slack (heap kept after transients)", 2 * m * m * F64, gp_knob))
    parts.append(Part("runtime: Python, torch, MPI (private)", RUNTIME_PRIVATE, "ranks per node"))
    return MemoryEstimate(inputs, tuple(parts))


def transient_parts(inputs: MemoryInputs, replay: int, networks: int) -> dict[str, int]:
    """Bytes allocated on top of the steady state, by the operation that allocates them (they never overlap)."""
    m, d = inputs.num_inducing, inputs.obs_dim
    packed = packed_size(m, d) * F64
    out: dict[str, int] = {}
    # fit: unpacked J, A = I + J, the identity, A's new Cholesky factor (the old posterior lives until then),
    # then the summed statistics are copied while the previous copy still exists.
    fit = 4 * m * m * F64 + packed if inputs.uses_model else 0
    if inputs.uses_model:
        out["model update"] = fit
        # predict over the held-out rows: k(x, Z), L^-1 k(Z, x) and R^-1 B, (rows x M) float64 each
        out["model prediction"] = 3 * HOLDOUT_ROWS * m * F64
    # A checkpoint copies the state (replay rows, J, h, the summed statistics, SAC and Adam) and writes it
    # (the writer's buffers); a resume reads as much, verified, and refits the posterior while it is alive.
    model_state = (m * m + m * d + PENDING_CHUNK * (2 * d + inputs.act_dim)) * F64 if inputs.uses_model else 0
    # (the posterior was cleared by the load, so the refit needs one M x M matrix less than a model update)
    refit = fit - m * m * F64 if inputs.uses_model else 0
    out["resume: state read + refit"] = replay + model_state + networks + WRITE_BUFFERS + refit
    # activations saved for backward (actor, both critics twice) and their gradients: batch x width floats
    out["SAC update"] = 12 * inputs.batch_size * sum(inputs.hidden) * F32
    return out


def estimate_memory(cfg: Any, ranks: int, max_degree: int, *, diameter: int | None = None,
                    obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM,
                    mmap_threshold: int | None | str = "environment") -> MemoryEstimate:
    """Bytes one rank of a run of `ranks` ranks needs, by part, for the config `cfg` (a Config).

    `max_degree`: the most neighbours any rank has (the graph's; 2 on a ring of >= 3 ranks).
    `diameter`: the graph's, for the scalar gossip buffers (default ranks - 1, an upper bound).
    `mmap_threshold`: the ranks' MALLOC_MMAP_THRESHOLD_ in bytes (default: this process's environment
    variable; the ranks inherit it from mpiexec); blocks from that size on are returned to the system,
    so the allocator slack disappears.
    Reads cfg.run.algorithm, cfg.run.device, cfg.model.{num_inducing, rollout_batch, rollout_length,
    imagined_keep}, cfg.sac.{buffer_size, hidden, batch_size}, cfg.comm.{algorithm, tol}.
    """
    model, sac = cfg.model, cfg.sac
    if mmap_threshold == "environment":
        text = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
        mmap_threshold = int(text) if text.isdigit() else None
    inputs = MemoryInputs(
        algorithm=cfg.run.algorithm, num_inducing=int(model.num_inducing), buffer_size=int(sac.buffer_size),
        imagined_rows=int(model.rollout_batch) * int(model.rollout_length) * int(model.imagined_keep),
        hidden=tuple(int(w) for w in sac.hidden), batch_size=int(sac.batch_size), ranks=int(ranks),
        max_degree=int(max_degree), diameter=max(int(ranks) - 1, 0) if diameter is None else int(diameter),
        tol_mode=cfg.comm.algorithm != "finite-time" and bool(cfg.comm.tol), device=str(cfg.run.device),
        obs_dim=obs_dim, act_dim=act_dim, mmap_threshold=mmap_threshold)
    return estimate_from(inputs)


def estimate_for_config(cfg: Any, ranks: int) -> MemoryEstimate:
    """`estimate_memory` (or `mamba_estimate` on a coupled world) with the degree and diameter of the config's
    graph on `ranks` ranks."""
    graph = cfg.comm.graph(ranks, cfg.run.seed)
    degree = max((len(n) for n in graph.neighbours), default=0)
    if cfg.uses_ppo:
        from odmar_mpi.worlds import coupled_world_sizes  # numpy only; builds one copy of the world

        obs_dim, n_actions, masked = coupled_world_sizes(cfg, ranks)
        return mamba_estimate(cfg, ranks, degree, obs_dim, n_actions, masked)
    return estimate_memory(cfg, ranks, degree, diameter=graph.diameter())


# ------------------------------------------------------------------------------------------- the node


def _cgroup_limit() -> int | None:
    """Bytes this process's memory cgroup may still use (v2 memory.max or v1 limit_in_bytes), else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, Path]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            for root in (Path("/sys/fs/cgroup") / relative, Path("/sys/fs/cgroup")):
                candidates.append((root / "memory.max", root / "memory.current"))
        elif "memory" in controllers.split(","):
            for root in (Path("/sys/fs/cgroup/memory") / relative, Path("/sys/fs/cgroup/memory")):
                candidates.append((root / "memory.limit_in_bytes", root / "memory.usage_in_bytes"))
    for limit_file, usage_file in candidates:
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text == "max" or int(text) >= 1 << 60:
            continue
        try:
            used = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            used = 0
        return max(int(text) - used, 0)
    return None


def available_memory() -> int:
    """Bytes of memory available to new processes on this machine, now.

    MemAvailable from /proc/meminfo (free memory plus what the kernel can reclaim, e.g. page cache),
    lowered to what this process's memory cgroup still allows if it has a limit (containers, SLURM
    jobs); where /proc/meminfo is missing, the total physical memory. Run on a login node, it
    describes the login node: pass the compute node's memory to check_fits instead.
    """
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = _cgroup_limit()
    return min(available, limit) if limit is not None else available


def size_text(count: float) -> str:
    """Bytes in decimal units: 1 MB = 1e6 bytes, 1 GB = 1e9."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def _largest_fitting(estimate: MemoryEstimate, field_name: str, low: int, high: int, ranks_per_node: int,
                     node_bytes: int) -> int | None:
    """The largest value of an input in [low, high] at which the node fits (monotone), or None."""

    def fits(value: int) -> bool:
        inputs = dataclasses.replace(estimate.inputs, **{field_name: value})
        return estimate_from(inputs).node_total(ranks_per_node) <= node_bytes

    if high < low or not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_fits(estimate: MemoryEstimate, ranks_per_node: int, node_bytes: int) -> str | None:
    """None if `ranks_per_node` ranks fit in `node_bytes`, else why not and what to turn, with the numbers."""
    need = estimate.node_total(ranks_per_node)
    if need <= node_bytes:
        return None
    inputs, largest = estimate.inputs, estimate.largest()
    fixes: list[tuple[str, str]] = []  # (knob, advice)
    if inputs.uses_model:
        m = _largest_fitting(estimate, "num_inducing", 1, inputs.num_inducing - 1, ranks_per_node, node_bytes)
        if m is not None:
            fixes.append(("model.num_inducing", f"model.num_inducing = {m} or less (now {inputs.num_inducing}; "
                                                f"memory grows as M^2)"))
    low = min(inputs.batch_size, inputs.buffer_size)
    buffer = _largest_fitting(estimate, "buffer_size", low, inputs.buffer_size - 1, ranks_per_node, node_bytes)
    if buffer is not None:
        fixes.append(("sac.buffer_size", f"sac.buffer_size = {buffer:,} or less (now {inputs.buffer_size:,}; "
                                         f"{transition_bytes(inputs.obs_dim, inputs.act_dim)} bytes per transition, twice at a resume)"))
    per_node = (node_bytes - estimate.shared) // estimate.total if node_bytes > estimate.shared else 0
    if 1 <= per_node < ranks_per_node:
        fixes.append(("ranks per node", f"at most {per_node} ranks per node (now {ranks_per_node}; spread the job "
                                        "over more nodes)"))
    by_knob: dict[str, int] = {}
    for part in estimate.parts:
        by_knob[part.knob] = by_knob.get(part.knob, 0) + part.bytes
    main_knob = max(by_knob, key=by_knob.get)
    fixes.sort(key=lambda fix: fix[0] != main_knob)  # the knob that drives the most memory first
    driven = (f"; {main_knob} drives {size_text(by_knob[main_knob])} of the {size_text(estimate.total)} per rank"
              if main_knob not in ("ranks per node", "-") else "")
    what = (f"needs {size_text(need)} per node for {ranks_per_node} rank{'s' if ranks_per_node != 1 else ''} "
            f"({size_text(estimate.total)} per rank + {size_text(estimate.shared)} shared libraries) but "
            f"{size_text(node_bytes)} is available; the largest part is {largest.name}, {size_text(largest.bytes)} "
            f"per rank{driven}")
    if not fixes:
        return f"{what}; nothing fits on such a node, even one rank with the smallest sizes: use a larger node."
    return f"{what}. Turn down one of: " + "; ".join(advice for _, advice in fixes) + "."


def format_memory(estimate: MemoryEstimate, ranks_per_node: int, node_bytes: int) -> str:
    """The per-rank breakdown, the node's total for `ranks_per_node` ranks, and whether it fits in `node_bytes`."""
    inputs = estimate.inputs
    what = (f"M = {inputs.num_inducing:,}, " if inputs.uses_model else "") + \
        f"replay {inputs.buffer_size:,} rows, {inputs.max_degree} neighbours"
    lines = [f"memory per rank (estimate; {inputs.algorithm}, {what}):"]
    width = max(len(part.name) for part in estimate.parts) + 2
    lines += [f"  {part.name:<{width}}{size_text(part.bytes):>10}" for part in estimate.parts]
    lines.append(f"  {'total per rank':<{width}}{size_text(estimate.total):>10}")
    need = estimate.node_total(ranks_per_node)
    share = f" ({100 * need / node_bytes:.0f} %)" if node_bytes > 0 else ""
    lines.append(f"per node: {ranks_per_node} x {size_text(estimate.total)} + {size_text(estimate.shared)} shared = "
                 f"{size_text(need)} of {size_text(node_bytes)} available{share}")
    if inputs.device != "cpu":
        lines.append(f"  (assumes the CPU; with run.device = {inputs.device} on a GPU node the GP, replay and network "
                     "tensors live in GPU memory instead)")
    return "\n".join(lines)
