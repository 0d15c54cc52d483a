"""The run's configuration: typed sections composed from the parts that own them, TOML loading, validation.

Each section is a settings dataclass (see `odmar_mpi.settings`): every field declares its default,
unit, allowed values and meaning once, and validation, `check --explain` and error messages all
read that declaration. `run`, `env` and `comm` belong to the node; `model` (ODMAR's sparse-GP
world model and imagination) and `sac`, MAMBA's `world_model` and `ppo` (shared with IPPO) are
declared by the model and policy packages, `mamba` (its schedule) by the learners. Defaults are
the original research code's default setting (docs/architecture.md): ODMAR with beta 0.01, action
penalty on, a cycle graph and 100 plain consensus rounds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odmar_mpi.comm.limits import MAX_ROUNDS, MIN_TOL
from odmar_mpi.comm.topology import TOPOLOGIES, Graph, TopologyError, build_graph
from odmar_mpi.comm.weights import ALGORITHMS as CONSENSUS_ALGORITHMS
from odmar_mpi.comm.weights import WEIGHT_SCHEMES, mixing_matrix
from odmar_mpi.learners import ALGORITHMS, DISCRETE_ACTIONS
from odmar_mpi.learners.settings import MambaConfig
from odmar_mpi.model.settings import ModelConfig, WorldModelConfig
from odmar_mpi.policy.settings import PPOConfig, SACConfig
from odmar_mpi.settings import (SettingError, check_settings, coerce, describe_settings, did_you_mean, setting,
                                unknown_field_hint)
from odmar_mpi.worlds import REWARD_COLLECTION, WORLD_PACKAGES, check_world

ConfigError = SettingError
"""A configuration problem, phrased for the person who wrote the config."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "bfloat16")
REWARD_SHARING = ("team", "local")


@dataclass
class RunConfig:
    """The `[run]` settings: what to train, for how long, and how the run is kept."""

    algorithm: str = setting("odmar", "'odmar' (sparse-GP model, optimistic imagination) or its model-free baseline "
                                      "'sac' (continuous actions); 'mamba' (learned world model with neighbour "
                                      "communication) or its model-free baseline 'ippo' (discrete actions).",
                             choices=ALGORITHMS)
    seed: int = setting(0, "Shared seed: world, inducing points, graph; each rank derives its own streams from "
                           "(seed, rank).", low=0)
    warmup_steps: int = setting(5000, "Uniform-random environment steps before learning starts, per agent.",
                                unit="steps", low=1)
    train_steps: int = setting(10000, "Environment steps with learning after warm-up, per agent.", unit="steps",
                               low=0)
    eval_every: int = setting(200, "Training steps between evaluations (one also runs when warm-up ends).",
                              unit="steps", low=1)
    eval_episodes: int = setting(5, "Deterministic evaluation episodes per evaluation, on the rank's own env "
                                    "copy.", low=1)
    checkpoint_every: int = setting(1000, "Environment steps between checkpoints; 0 = only at the end.",
                                    unit="steps", low=1, zero_disables=True)
    keep_checkpoints: int = setting(2, "Checkpoints kept per rank, oldest removed first (resume falls back to "
                                       "an older common one if the newest is damaged).", low=1)
    device: str = setting("auto", "'auto' (cuda:<local rank % GPUs> when CUDA is available, else cpu), 'cpu', "
                                  "or 'cuda' (refused where there is no GPU).", choices=DEVICES)
    precision: str = setting("float32", "Arithmetic of the learners' network updates (world model, imagination, "
                                        "PPO, SAC): 'float32', or 'bfloat16' mixed precision (torch.autocast: matrix "
                                        "products in bfloat16; weights, optimiser states and losses stay float32): "
                                        "about 2x the matmul rate on CPUs with AVX512-BF16 or AMX and on GPUs, at "
                                        "bfloat16's 3 significant digits. Acting, evaluation and the GP's float64 "
                                        "algebra are unchanged.", choices=PRECISIONS)
    torch_threads: int = setting(1, "Torch intra-op threads per rank; 1 suits one rank per core.", low=1)
    baseline_draws: int = setting(5, "Coupled worlds: plays of uniformly random allowed actions per evaluation "
                                     "episode, on the evaluation's own episodes (the bottom of the scale each "
                                     "evaluation is scored against; the world's reference policy, where it has one, "
                                     "plays each episode once); the plays are shared out over the ranks.", low=1)
    progress_every: int = setting(0, "Steps between progress lines on rank 0; 0 = one per evaluation.",
                                  unit="steps", low=0)


@dataclass
class EnvConfig:
    """The `[env]` settings: the world every rank holds a copy of."""

    world: str = setting(REWARD_COLLECTION, "'reward-collection' (agents move alone; ODMAR's world), or a coupled "
                                            "PettingZoo world stepped with everyone's actions: 'simple_spread' "
                                            "(mpe2), 'smax' (StarCraft-style battles, jaxmarl), 'flatland' (trains, "
                                            "flatland-rl), or your own as 'package.module:factory' (a function "
                                            "returning a PettingZoo ParallelEnv with Discrete actions).")
    scenario: str = setting("", "The coupled world's scenario: SMAX's map (e.g. '3m', '2s3z', 'Nm'), Flatland's "
                                "setting (e.g. '5_agents'); '' = the world's default.")
    n_agents: int = setting(0, "Agents in the world; 0 = one per rank (any other value must equal the rank "
                               "count).", low=0)
    n_rewards: int = setting(10, "Reward-collection world: reward sites on the grid.", low=1)
    action_penalty: bool = setting(True, "Subtract sum|action| from each step's reward.")
    episode_length: int = setting(100, "Steps per episode (a truncation, not a terminal state); on coupled worlds 0 "
                                       "= the world's own limit (SMAX: SMAC's per map; Flatland: its timetable's; "
                                       "simple_spread: 25).", unit="steps", low=0)
    reward_sharing: str = setting("team", "'team': every agent learns from the team reward (exact sum over ranks "
                                          "by per-step gossip); 'local': from its own.", choices=REWARD_SHARING)
    reward_scale: float = setting(1.0, "Multiplies the reward the learners learn from (SMAC scales a battle's "
                                       "rewards to at most 20; SMAX's come to about 2, so 10 matches SMAC). Returns, "
                                       "shares and win rates are reported in the world's own units.", low=0,
                                  low_open=True)


@dataclass
class CommConfig:
    """The `[comm]` settings: the communication graph and how consensus runs over it."""

    topology: str = setting("ring", "Communication graph of the ranks.", choices=TOPOLOGIES)
    weights: str = setting("metropolis", "Mixing weights: metropolis, original (cycle only: self 0.5, "
                                         "neighbours 0.25), max-degree.", choices=WEIGHT_SCHEMES)
    algorithm: str = setting("plain", "Consensus: plain (x <- W x), chebyshev, finite-time (exact after K "
                                      "rounds).", choices=CONSENSUS_ALGORITHMS)
    rounds: int = setting(100, "Gossip rounds per consensus for plain/chebyshev (with tol: the most); 0 = the "
                               "algorithm's own (finite-time: K).", unit="rounds", low=0, high=MAX_ROUNDS)
    tol: float = setting(0.0, "Stop plain/chebyshev once neighbours agree to this relative tolerance; 0 = off.",
                         low=MIN_TOL, high=1, high_open=True, zero_disables=True)
    timeout_s: float = setting(120.0, "Seconds to wait for a neighbour before aborting with an error naming it.",
                               unit="s", low=0, low_open=True)
    parameter_rounds: int = setting(1, "Learners that share weights (MAMBA, IPPO): rounds of x <- W x over the "
                                       "neighbours after each training phase (decentralised SGD); 0 = no sharing.",
                                    unit="rounds", low=0, high=MAX_ROUNDS)
    edges_file: str = setting("", "For topology = 'edges': a text file with one 'i j' edge per line.")
    radius: float = setting(0.5, "For topology = 'random-geometric': connection radius in the unit square.",
                            low=0, low_open=True)
    edge_probability: float = setting(0.5, "For topology = 'erdos-renyi': probability of each edge.", low=0,
                                      high=1, low_open=True)

    def graph(self, ranks: int, seed: int) -> Graph:
        """The communication graph on `ranks` ranks (connected, or TopologyError naming the problem)."""
        return build_graph(self.topology, ranks, seed=seed, edges_file=self.edges_file or None,
                           radius=self.radius, p=self.edge_probability)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)

    @property
    def total_steps(self) -> int:
        return self.run.warmup_steps + self.run.train_steps

    @property
    def uses_model(self) -> bool:
        return self.run.algorithm == "odmar"

    @property
    def uses_ppo(self) -> bool:
        """The [ppo] actor-critic acts (MAMBA in imagination, IPPO on real data), not SAC."""
        return self.run.algorithm in ("mamba", "ippo")


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} mapping onto `base` (default: the built-in defaults).

    Types are checked here; ranges and cross-field rules by `validate`.
    """
    cfg = dataclasses.replace(base) if base is not None else Config()
    sections = _sections()
    for section, values in data.items():
        if not isinstance(values, dict):
            if section in sections:
                raise ConfigError(f"[{section}] must be a table of keys, got {values!r}.")
            raise ConfigError(f"unknown top-level key {section!r} = {values!r}: every setting belongs to a section, "
                              f"e.g. [run] seed = 1 or --set run.seed=1.{_owner_hint(section, sections)}")
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}].{did_you_mean(section, sections)}")
        hints = typing.get_type_hints(sections[section])
        current = _copy_unchecked(getattr(cfg, section))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown config key {section}.{key}.{unknown_field_hint(key, sections[section])}")
            setattr(current, key, coerce(f"{section}.{key}", value, hints[key]))
        setattr(cfg, section, current)
    return cfg


def _copy_unchecked(section: Any) -> Any:
    """A copy of a section whose fields may then be set one by one (validation comes after all are set)."""
    copy = object.__new__(type(section))
    copy.__dict__.update({key: list(value) if isinstance(value, list) else value
                          for key, value in section.__dict__.items()})
    return copy


def _owner_hint(key: str, sections: dict[str, type]) -> str:
    """' Did you mean [model] beta?' when `key` is a field of exactly one section."""
    owners = [name for name, cls in sections.items() if key in typing.get_type_hints(cls)]
    return f" Did you mean {owners[0]}.{key}?" if len(owners) == 1 else ""


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


def validate(cfg: Config, ranks: int) -> None:
    """Refuse anything that would fail later, with a message naming the key, the value and the fix.

    Needs no MPI and allocates nothing: `python -m odmar_mpi.check` runs it on a login node.
    """
    for name in _sections():
        check_settings(getattr(cfg, name), f"{name}.")
    validate_world(cfg, ranks)
    if cfg.comm.topology == "edges":
        if not cfg.comm.edges_file:
            raise ConfigError('comm.topology = "edges" needs comm.edges_file, a text file with one "i j" edge per line.')
        if not Path(cfg.comm.edges_file).is_file():
            raise ConfigError(f"comm.edges_file = {cfg.comm.edges_file!r} does not exist; give the path of the edge list.")
    if cfg.comm.algorithm != "finite-time" and cfg.comm.rounds == 0 and cfg.comm.tol == 0:
        raise ConfigError(
            f"comm.algorithm = {cfg.comm.algorithm!r} needs comm.rounds > 0 or comm.tol > 0 (or use comm.algorithm = \"finite-time\")."
        )
    if cfg.sac.buffer_size < cfg.sac.batch_size:
        raise ConfigError(f"sac.buffer_size = {cfg.sac.buffer_size} is smaller than sac.batch_size = {cfg.sac.batch_size}.")
    try:
        graph = cfg.comm.graph(ranks, cfg.run.seed)
        mixing_matrix(graph, cfg.comm.weights)
    except (TopologyError, ValueError) as err:
        raise ConfigError(f"with {ranks} ranks: {err}") from err  # comm's message names the key and the fix
    buffer_starts = cfg.model.rollout_batch - round(cfg.model.uniform_starts * cfg.model.rollout_batch)
    # A step's transition enters the buffer once its reward has crossed the graph (docs/architecture.md).
    if cfg.uses_model and buffer_starts and cfg.run.warmup_steps < (diameter := graph.diameter()):
        raise ConfigError(
            f"run.warmup_steps = {cfg.run.warmup_steps} leaves the real buffer empty when imagination first draws "
            f"start states from it: a step's transition is stored once the step's rewards have crossed the graph, "
            f"diameter {diameter} with {ranks} ranks; warm up for at least {diameter} steps, or set "
            "model.uniform_starts = 1.")


def validate_world(cfg: Config, ranks: int) -> None:
    """The world's package is installed, its agent count is the rank count, its actions suit the algorithm; the
    world (or its factory of your own) says what else is wrong (an unknown scenario, its agent count)."""
    world, algorithm = cfg.env.world, cfg.run.algorithm
    if world in WORLD_PACKAGES:
        package, install = WORLD_PACKAGES[world]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"env.world = {world!r} needs the package {package!r}, which is not installed: {install}")
    if world == REWARD_COLLECTION and cfg.env.episode_length < 1:
        raise ConfigError(f"env.episode_length = {cfg.env.episode_length}: the reward-collection world needs >= 1 "
                          "steps per episode (0, the world's own limit, is for coupled worlds).")
    if cfg.env.n_agents not in (0, ranks):
        raise ConfigError(f"env.n_agents = {cfg.env.n_agents} but the job has {ranks} ranks: one rank runs one agent, "
                          f"so launch {cfg.env.n_agents} ranks (mpirun -n {cfg.env.n_agents}) or set env.n_agents = 0.")
    discrete_world = world != REWARD_COLLECTION
    if discrete_world and DISCRETE_ACTIONS[algorithm]:
        try:
            check_world(cfg, ranks)
        except (ValueError, ImportError) as err:  # the world's own words: what is wrong and the fix
            raise ConfigError(str(err)) from None
    if DISCRETE_ACTIONS[algorithm] != discrete_world:
        kind, other = ("discrete", "continuous") if discrete_world else ("continuous", "discrete")
        fits = [name for name, discrete in DISCRETE_ACTIONS.items() if discrete == discrete_world]
        raise ConfigError(f"run.algorithm = {algorithm!r} acts with {other} actions but env.world = {world!r} takes "
                          f"{kind} ones; choose run.algorithm from {', '.join(fits)} for this world"
                          + (f", or env.world = {REWARD_COLLECTION!r}" if discrete_world
                             else f", or a world with discrete actions: env.world = {', '.join(map(repr, WORLD_PACKAGES))}")
                          + ".")


def explain() -> str:
    """Every setting, section by section: key, default, unit, allowed values and meaning."""
    lines: list[str] = []
    for name, cls in _sections().items():
        lines.append(f"[{name}] {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines += [f"  {line}" for line in describe_settings(cls, name)]
        lines.append("")
    return "\n".join(lines)


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
