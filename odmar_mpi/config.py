"""Typed run configuration: dataclasses with documented defaults, TOML loading, validation.

Defaults are the original research code's default setting (DESIGN.md section 6):
ODMAR with beta 0.01, action penalty on, a cycle graph and 100 plain consensus rounds.
Every field's docstring gives its unit and allowed range; validation quotes them.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


@dataclass
class RunConfig:
    algorithm: str = "odmar"
    """'odmar' (model-based, optimistic imagination) or 'sac' (model-free baseline, same node)."""
    seed: int = 0
    """Shared seed: world noise, inducing points, graph; each rank adds its rank for its own streams. >= 0."""
    warmup_steps: int = 5000
    """Uniform-random environment steps before learning starts, per agent. >= 1."""
    train_steps: int = 10000
    """Environment steps with learning after warm-up, per agent. >= 0."""
    eval_every: int = 200
    """Training steps between evaluations (one also runs when warm-up ends). >= 1."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes per evaluation, on the rank's own env copy. >= 1."""
    checkpoint_every: int = 1000
    """Environment steps between checkpoints; 0 disables periodic checkpoints (one is still written at the end). >= 0."""
    keep_checkpoints: int = 2
    """Checkpoints kept per rank (oldest removed first). >= 1."""
    device: str = "auto"
    """'auto' (cuda:<local rank % GPUs> when CUDA is available, else cpu), 'cpu', or 'cuda'."""
    torch_threads: int = 1
    """Torch intra-op threads per rank; 1 suits one rank per core. >= 1."""
    progress_every: int = 0
    """Steps between progress lines on rank 0; 0 prints one per evaluation. >= 0."""
    stop_check_every: int = 10
    """Steps between the ranks' agreement on a stop signal (SIGTERM/SIGUSR1). >= 1."""


@dataclass
class EnvConfig:
    n_rewards: int = 10
    """Reward sites on the grid. >= 1."""
    action_penalty: bool = True
    """Subtract sum|action| from each step's reward."""
    episode_length: int = 100
    """Steps per episode (a truncation, not a terminal state). >= 1."""
    reward_sharing: str = "team"
    """'team': every agent learns from the team reward (exact sum by scalar consensus); 'local': its own."""


@dataclass
class CommConfig:
    topology: str = "ring"
    """Graph: ring, path, star, grid, torus, complete, hypercube, exponential, random-geometric, erdos-renyi, edges."""
    weights: str = "metropolis"
    """Mixing weights: metropolis, original (cycle only: self 0.5, neighbours 0.25), max-degree."""
    algorithm: str = "plain"
    """Consensus: plain (x <- W x), chebyshev, finite-time (exact after K rounds)."""
    rounds: int = 100
    """Gossip rounds per consensus for plain/chebyshev; 0 = the algorithm's own (finite-time: K) or until tol. >= 0."""
    tol: float = 0.0
    """Stop plain/chebyshev once neighbours agree to this relative tolerance; 0 = off. >= 0."""
    timeout_s: float = 120.0
    """Seconds to wait for a neighbour before aborting with an error naming it. > 0."""
    edges_file: str = ""
    """For topology = 'edges': a text file with one 'i j' edge per line."""
    radius: float = 0.5
    """For topology = 'random-geometric': connection radius in the unit square. > 0."""
    edge_probability: float = 0.5
    """For topology = 'erdos-renyi': probability of each edge. In (0, 1]."""


@dataclass
class ModelConfig:
    num_inducing: int = 1000
    """Inducing points M (shared by seed). Memory per rank grows as M^2 (8 MB at 1000). >= 1."""
    lengthscale: float = 2.0
    """RBF lengthscale on raw inputs (position, action). > 0."""
    linear_variance: float = 1.0
    """Scale of the linear kernel x.y. >= 0."""
    constant: float = 0.1
    """Constant kernel offset. >= 0."""
    noise_var: float = 0.01
    """Observation noise variance s^2. > 0."""
    update_every: int = 250
    """Steps between consensus + posterior + imagination. >= 1."""
    holdout_every: int = 10
    """Every n-th real transition is held out of the model to measure its prediction error; 0 = none. >= 0."""
    beta: float = 0.01
    """Optimism: reward bonus beta * (sum over outputs of the predictive std). >= 0."""
    rollout_batch: int = 256
    """Imagined rollouts started per model update. >= 1."""
    rollout_length: int = 2
    """Imagined steps per rollout. >= 1."""
    imagined_keep: int = 5
    """Model updates whose imagined data stay in the imagined buffer. >= 1."""


@dataclass
class SACConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer widths of actor and critics. Each >= 1."""
    lr: float = 3e-4
    """Adam learning rate for actor, critics and temperature. > 0."""
    gamma: float = 0.99
    """Discount. In [0, 1)."""
    tau: float = 0.005
    """Polyak rate of the target critics. In (0, 1]."""
    init_alpha: float = 1.0
    """Initial entropy temperature. > 0."""
    target_entropy: float = -2.0
    """Entropy target (nats)."""
    batch_size: int = 256
    """Transitions per SAC update. >= 1."""
    buffer_size: int = 1_000_000
    """Real replay buffer capacity (preallocated). >= 1."""
    updates_per_step: int = 10
    """SAC updates per environment step after warm-up. >= 1."""
    real_ratio: float = 0.0
    """Share of real transitions per batch (at least one is always real). In [0, 1]."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sac: SACConfig = field(default_factory=SACConfig)

    @property
    def total_steps(self) -> int:
        return self.run.warmup_steps + self.run.train_steps

    @property
    def uses_model(self) -> bool:
        return self.run.algorithm == "odmar"

    def policy_settings(self) -> dict[str, Any]:
        """Keyword arguments of policy.sac.SACConfig (the node and the report build the same actor)."""
        sac = self.sac
        return dict(hidden=tuple(sac.hidden), lr=sac.lr, gamma=sac.gamma, tau=sac.tau, init_alpha=sac.init_alpha,
                    target_entropy=sac.target_entropy, batch_size=sac.batch_size)


CHOICES: dict[str, tuple[str, ...]] = {
    "run.algorithm": ("odmar", "sac"),
    "run.device": ("auto", "cpu", "cuda"),
    "env.reward_sharing": ("team", "local"),
    "comm.weights": ("metropolis", "original", "max-degree"),
    "comm.algorithm": ("plain", "chebyshev", "finite-time"),
}

# (lower, lower inclusive, upper, upper inclusive); None = unbounded.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "run.seed": (0, True, None, False),
    "run.warmup_steps": (1, True, None, False),
    "run.train_steps": (0, True, None, False),
    "run.eval_every": (1, True, None, False),
    "run.eval_episodes": (1, True, None, False),
    "run.checkpoint_every": (0, True, None, False),
    "run.keep_checkpoints": (1, True, None, False),
    "run.torch_threads": (1, True, None, False),
    "run.progress_every": (0, True, None, False),
    "run.stop_check_every": (1, True, None, False),
    "env.n_rewards": (1, True, None, False),
    "env.episode_length": (1, True, None, False),
    "comm.rounds": (0, True, None, False),
    "comm.tol": (0, True, None, False),
    "comm.timeout_s": (0, False, None, False),
    "comm.radius": (0, False, None, False),
    "comm.edge_probability": (0, False, 1, True),
    "model.num_inducing": (1, True, None, False),
    "model.lengthscale": (0, False, None, False),
    "model.linear_variance": (0, True, None, False),
    "model.constant": (0, True, None, False),
    "model.noise_var": (0, False, None, False),
    "model.update_every": (1, True, None, False),
    "model.holdout_every": (0, True, None, False),
    "model.beta": (0, True, None, False),
    "model.rollout_batch": (1, True, None, False),
    "model.rollout_length": (1, True, None, False),
    "model.imagined_keep": (1, True, None, False),
    "sac.lr": (0, False, None, False),
    "sac.gamma": (0, True, 1, False),
    "sac.tau": (0, False, 1, True),
    "sac.init_alpha": (0, False, None, False),
    "sac.batch_size": (1, True, None, False),
    "sac.buffer_size": (1, True, None, False),
    "sac.updates_per_step": (1, True, None, False),
    "sac.real_ratio": (0, True, 1, True),
}


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid: {', '.join(sorted(options))}."


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is list:
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:  # pragma: no cover - every field uses one of the types above
        raise TypeError(f"unsupported config type {hint} for {key}")
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key} = {value!r} has type {type(value).__name__}; expected {name}.")
    return value


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} mapping onto `base` (default: the built-in defaults)."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    sections = _sections()
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}].{_did_you_mean(section, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}.")
        hints = _field_types(sections[section])
        current = dataclasses.replace(getattr(cfg, section))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key {section}.{key}.{_did_you_mean(key, list(hints))}"
                )
            setattr(current, key, _coerce(f"{section}.{key}", value, hints[key]))
        setattr(cfg, section, current)
    return cfg


def parse_override(text: str) -> dict[str, Any]:
    """'section.key=value' (value in TOML syntax; bare words are strings) -> {section: {key: value}}."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            f"--set {text!r}: expected section.key=value, e.g. --set model.beta=0.0 or --set comm.topology=torus"
        )
    dotted, raw = (part.strip() for part in text.split("=", 1))
    section, key = dotted.split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as ring or finite-time
    return {section: {key: value}}


def load_config(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Built-in defaults, then the TOML file (if any), then each --set override in order."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing TOML file (see configs/).")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
        cfg = config_from_dict(data, cfg)
    for text in overrides:
        cfg = config_from_dict(parse_override(text), cfg)
    return cfg


def _check_range(key: str, value: float) -> None:
    low, low_incl, high, high_incl = RANGES[key]
    too_low = low is not None and (value < low or (value == low and not low_incl))
    too_high = high is not None and (value > high or (value == high and not high_incl))
    if too_low or too_high:
        lo = "" if low is None else f"{'>=' if low_incl else '>'} {low:g}"
        hi = "" if high is None else f"{'<=' if high_incl else '<'} {high:g}"
        allowed = " and ".join(part for part in (lo, hi) if part)
        raise ConfigError(f"{key} = {value!r} is out of range; allowed: {allowed}.")


def validate(cfg: Config, ranks: int) -> None:
    """Refuse anything that would fail later, with a message naming the key, the value and the fix."""
    from odmar_mpi.comm.topology import TOPOLOGIES, TopologyError, build_graph
    from odmar_mpi.comm.weights import mixing_matrix

    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in options:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {', '.join(options)}.{_did_you_mean(value, list(options))}")
    for key in RANGES:
        section, name = key.split(".")
        _check_range(key, getattr(getattr(cfg, section), name))
    if not cfg.sac.hidden or any(width < 1 for width in cfg.sac.hidden):
        raise ConfigError(f"sac.hidden = {cfg.sac.hidden!r}: give at least one layer width, each >= 1, e.g. [256, 256].")
    if cfg.comm.topology not in TOPOLOGIES:
        raise ConfigError(
            f"comm.topology = {cfg.comm.topology!r} is not a known graph.{_did_you_mean(cfg.comm.topology, list(TOPOLOGIES))}"
        )
    if cfg.comm.topology == "edges":
        if not cfg.comm.edges_file:
            raise ConfigError('comm.topology = "edges" needs comm.edges_file, a text file with one "i j" edge per line.')
        if not Path(cfg.comm.edges_file).is_file():
            raise ConfigError(f"comm.edges_file = {cfg.comm.edges_file!r} does not exist; give the path of the edge list.")
    if cfg.comm.algorithm != "finite-time" and cfg.comm.rounds == 0 and cfg.comm.tol == 0:
        raise ConfigError(
            f"comm.algorithm = {cfg.comm.algorithm!r} needs comm.rounds > 0 or comm.tol > 0 (or use comm.algorithm = \"finite-time\")."
        )
    if cfg.uses_model and cfg.model.rollout_batch > cfg.run.warmup_steps:
        raise ConfigError(
            f"model.rollout_batch = {cfg.model.rollout_batch} exceeds run.warmup_steps = {cfg.run.warmup_steps}: "
            "imagination samples its start states from the real buffer; lower the batch or warm up longer."
        )
    if cfg.sac.buffer_size < cfg.sac.batch_size:
        raise ConfigError(f"sac.buffer_size = {cfg.sac.buffer_size} is smaller than sac.batch_size = {cfg.sac.batch_size}.")
    try:
        graph = build_graph(
            cfg.comm.topology,
            ranks,
            seed=cfg.run.seed,
            edges_file=cfg.comm.edges_file or None,
            radius=cfg.comm.radius,
            p=cfg.comm.edge_probability,
        )
        mixing_matrix(graph, cfg.comm.weights)
    except (TopologyError, ValueError) as err:
        raise ConfigError(f"with {ranks} ranks: {err}") from err  # comm's message names the key and the fix


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (round-trips through load_config)."""
    lines: list[str] = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)
