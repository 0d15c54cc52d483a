"""`python -m odmar_mpi.report RUN_DIR ...`: read a run's per-rank records, summarise, plot, animate.

A run folder holds `records/rank<r>.h5` for every rank (see `odmar_mpi.records`) and
`checkpoints/`. The summary (`summarise`) is a plain dict, printed as a table (`format_table`)
or as JSON; `plot_learning_curves` draws team evaluation returns of several runs grouped by
`run_label`; `write_gif` replays the newest checkpoints' actors in one deterministic episode.
`final_report` is what `python -m odmar_mpi.run` prints at the end of a run.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, NoReturn

import click
import numpy as np

from odmar_mpi.checkpoint import CheckpointError, load_checkpoint, local_steps
from odmar_mpi.config import Config, ConfigError, config_from_dict
from odmar_mpi.records import read_records, records_path
from odmar_mpi.telemetry import PHASES
from odmar_mpi.worlds import world_optimum

EXIT_USAGE = 2
# team_return is an exact gossip sum, identical on every rank up to summation order.
TEAM_RETURN_RTOL = 1e-9
MAX_EVAL_ROWS = 12
SHARES = (0.9, 0.95, 0.98)  # shares of the optimum whose first evaluation step the summary reports
GIF_EVERY = 2  # render every 2nd step: half the frames, motion still smooth
GIF_SIZE = 300  # pixels per side
GIF_FPS = 10
_RANK_FILE = re.compile(r"rank(\d+)\.h5$")

Tables = dict[str, dict[str, np.ndarray]]


class ReportError(RuntimeError):
    """A run folder cannot be read; the message names the folder or file and what is expected."""


@dataclass
class Run:
    """One run folder's records: the config it ran with and every rank's tables (index = rank)."""

    path: Path
    config: Config
    ranks: list[Tables]
    device: str


# ---------------------------------------------------------------------- reading


def load_run(run_dir: Path) -> Run:
    """Read every rank's records file of `run_dir`; raises ReportError naming what is missing."""
    run_dir = Path(run_dir)
    found = _rank_files(run_dir)
    first_rank = min(found)
    tables0, attrs0 = _read(found[first_rank])
    agents = int(attrs0["agents"])
    missing = [records_path(run_dir, r) for r in range(agents) if r not in found]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ReportError(f"run {run_dir} has {agents} agents (from {found[first_rank].name}) but {names} "
                          f"{'is' if len(missing) == 1 else 'are'} missing; every rank writes its own records file.")
    extra = sorted(r for r in found if r >= agents)
    if extra:
        raise ReportError(f"run {run_dir} has {agents} agents but also records of rank(s) {extra}; "
                          "remove the files of another run from its records folder.")
    ranks = [tables0 if r == first_rank else _read(found[r])[0] for r in range(agents)]
    return Run(path=run_dir, config=_config_from_attrs(found[first_rank], attrs0), ranks=ranks,
               device=str(attrs0.get("device", "?")))


def _rank_files(run_dir: Path) -> dict[int, Path]:
    """{rank: path} of the records files present; ReportError when there are none."""
    folder = records_path(run_dir, 0).parent
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist; pass a folder written by python -m odmar_mpi.run.")
    found = {int(m.group(1)): p for p in sorted(folder.glob("rank*.h5")) if (m := _RANK_FILE.match(p.name))}
    if not found:
        raise ReportError(f"{run_dir} holds no records: expected {folder}/rank0000.h5 (one file per rank, "
                          "written by python -m odmar_mpi.run at each checkpoint); is this a run folder?")
    return found


def _read(path: Path) -> tuple[Tables, dict[str, Any]]:
    try:
        return read_records(path)
    except (OSError, KeyError) as err:  # h5py's errors for a damaged or foreign file
        raise ReportError(f"records file {path} cannot be read ({err}); it is damaged or not a records file.") from err


def _config_from_attrs(path: Path, attrs: dict[str, Any]) -> Config:
    # The records carry the config the ranks actually ran (config.toml is not rewritten on resume with --set).
    try:
        return config_from_dict(tomllib.loads(attrs["config"]))
    except (KeyError, tomllib.TOMLDecodeError, ConfigError) as err:
        raise ReportError(f"records file {path} has no readable 'config' attribute ({err}).") from err


def run_label(cfg: Config) -> str:
    """Legend label naming what differs between the paper's settings, e.g. 'odmar beta=0.01', 'sac'."""
    label = f"odmar beta={cfg.model.beta:g}" if cfg.uses_model else cfg.run.algorithm
    if cfg.run.algorithm == "mamba" and cfg.mamba.communication != "neighbours":
        label += f", communication: {cfg.mamba.communication}"
    if not cfg.env.action_penalty:
        label += ", no action penalty"
    if cfg.env.reward_sharing != "team":
        label += f", {cfg.env.reward_sharing} rewards"
    return label


def team_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, team evaluation returns) as recorded on rank 0 (every rank holds the same)."""
    table = run.ranks[0]["eval"]
    return table["step"], table["team_return"]


def holdout_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, model held-out RMSE averaged over ranks, NaN where no rank has one) per model update."""
    if any("model" not in t for t in run.ranks):
        return np.empty(0), np.empty(0)
    rows = min(len(t["model"]["step"]) for t in run.ranks)
    per_rank = np.stack([t["model"]["holdout_rmse"][:rows] for t in run.ranks])
    mean = np.array([_finite_mean(per_rank[:, i]) for i in range(rows)], dtype=np.float64)
    return run.ranks[0]["model"]["step"][:rows], mean


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none (a rank with no held-out data yet)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


# ---------------------------------------------------------------------- the summary


def evaluation_policy(cfg: Config) -> str:
    """How evaluations act: PPO-trained actors may sample (`ppo.evaluation`); SAC acts with its mean."""
    sampled = cfg.uses_ppo and cfg.ppo.evaluation == "sample"
    return "actions sampled from the policy" if sampled else "deterministic policy"


def summarise(run: Run | Path) -> dict[str, Any]:
    """The run at a glance as a JSON-ready dict (missing or NaN numbers are None).

    Keys: run, label, evaluation_policy (how evaluations chose actions), agents, device, steps (last
    step in the records), planned_steps, eval (list of {step, team_return}), final_team_return, best
    ({step, team_return}), model_error, consensus and timing (None for a run without model updates or
    timings), warnings (strings, e.g. ranks whose team returns disagree).
    """
    if not isinstance(run, Run):
        run = load_run(run)
    steps, team = team_curve(run)
    best = int(np.argmax(team)) if team.size else None
    optimum = world_optimum(run.config, len(run.ranks))
    random_eval = run.ranks[0].get("random_eval", {}).get("team_return", np.empty(0))
    return {
        "run": str(run.path),
        "label": run_label(run.config),
        "evaluation_policy": evaluation_policy(run.config),
        "algorithm": run.config.run.algorithm,
        "env": run.config.env.world,
        "agents": len(run.ranks),
        "device": run.device,
        "steps": _last_step(run.ranks[0]),
        "planned_steps": run.config.total_steps,
        "eval": [{"step": int(s), "team_return": float(r), "optimal_share": _number(float(r) / optimum)}
                 for s, r in zip(steps, team)],
        "optimal_team_return": _number(optimum),
        "random_team_return": float(random_eval[0]) if random_eval.size else None,
        "final_team_return": float(team[-1]) if team.size else None,
        "final_optimal_share": _number(float(team[-1]) / optimum) if team.size else None,
        "steps_to_share": {f"{share:g}": _first_step_at(steps, team, share * optimum) for share in SHARES},
        "best": None if best is None else {"step": int(steps[best]), "team_return": float(team[best])},
        "model_error": _model_error(run),
        "consensus": _consensus(run),
        "timing": _timing(run),
        "warnings": _team_return_disagreements(run),
    }


def _first_step_at(steps: np.ndarray, team: np.ndarray, target: float) -> int | None:
    """The first evaluation step whose team return reaches `target` (None if none does)."""
    reached = np.flatnonzero(team >= target)
    return int(steps[reached[0]]) if reached.size else None


def _number(value: float) -> float | None:
    # JSON has no NaN: a quantity not measured (yet) is null.
    return float(value) if math.isfinite(value) else None


def _last_step(tables: Tables) -> int:
    return int(max((table["step"].max() for table in tables.values() if table["step"].size), default=0))


def _model_error(run: Run) -> dict[str, Any] | None:
    """Held-out RMSE (mean over ranks) at the first and last model update, and on the last evaluation's episodes."""
    steps, rmse = holdout_curve(run)
    if not steps.size:
        return None
    final_eval = _finite_mean(np.array([t["model_eval"]["model_rmse"][-1] for t in run.ranks
                                        if t.get("model_eval", {}).get("step", np.empty(0)).size]))
    return {"updates": int(steps.size), "first_step": int(steps[0]), "first_holdout_rmse": _number(rmse[0]),
            "last_step": int(steps[-1]), "last_holdout_rmse": _number(rmse[-1]), "final_eval_rmse": _number(final_eval)}


def _consensus(run: Run) -> dict[str, Any] | None:
    """Gossip rounds per model update and the residual left after the last round, over all ranks and updates."""
    tables = [t["model"] for t in run.ranks if "model" in t and t["model"]["step"].size]
    if not tables:
        return None
    rounds = np.concatenate([t["consensus_rounds"] for t in tables])
    residuals = np.concatenate([t["consensus_residual"] for t in tables])
    return {"rounds_min": int(rounds.min()), "rounds_max": int(rounds.max()),
            "max_residual": _number(residuals.max()),
            "last_max_residual": _number(max(t["consensus_residual"][-1] for t in tables))}


def _timing(run: Run) -> dict[str, Any] | None:
    """Cumulative seconds per phase at the last timing row, mean over ranks (phases a run's version did not
    record are left out), environment steps per second, and the seconds spent waiting for neighbours (part of
    the communication phases; None where not recorded)."""
    tables = [t["timing"] for t in run.ranks if t["timing"]["step"].size]
    if not tables:
        return None
    seconds = {phase: float(np.mean([t[phase][-1] for t in tables])) for phase in PHASES if phase in tables[0]}
    total = sum(seconds.values())
    step = int(tables[0]["step"][-1])
    waiting = float(np.mean([t["waiting"][-1] for t in tables])) if "waiting" in tables[0] else None
    return {"step": step, "seconds": seconds, "total_s": total, "steps_per_s": step / total if total > 0 else None,
            "waiting_s": waiting}


def _team_return_disagreements(run: Run) -> list[str]:
    """One warning per rank whose evaluation steps or team returns differ from rank 0's (relative 1e-9)."""
    steps0, team0 = team_curve(run)
    warnings = []
    for rank, tables in enumerate(run.ranks[1:], start=1):
        steps, team = tables["eval"]["step"], tables["eval"]["team_return"]
        if not np.array_equal(steps, steps0):
            warnings.append(f"rank {rank} has {steps.size} evaluations, rank 0 has {steps0.size} (or at other steps): "
                            "their records files come from different points of the run.")
            continue
        bad = np.flatnonzero(np.abs(team - team0) > TEAM_RETURN_RTOL * np.maximum(np.abs(team), np.abs(team0)))
        if bad.size:
            i = bad[0]
            warnings.append(f"team return differs between ranks at {bad.size} of {steps.size} evaluations: first at "
                            f"step {int(steps[i])}, rank {rank} has {team[i]!r}, rank 0 has {team0[i]!r} "
                            f"(allowed relative difference {TEAM_RETURN_RTOL:g}); the team sum did not reach consensus.")
    return warnings


def eval_rows_to_show(count: int, max_rows: int = MAX_EVAL_ROWS) -> list[int]:
    """Indices of the evaluations to print: all of them, or the first, every k-th and the last."""
    if count <= max_rows:
        return list(range(count))
    every = math.ceil((count - 1) / (max_rows - 1))
    shown = list(range(0, count, every))
    return shown if shown[-1] == count - 1 else shown + [count - 1]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a few lines a researcher reads at a glance."""
    lines = [f"run {summary['run']}: {summary['label']}, {summary['agents']} agents on {summary['device']}, "
             f"{summary['steps']} of {summary['planned_steps']} steps per agent"]
    evals = summary["eval"]
    if evals:
        shown = eval_rows_to_show(len(evals))
        note = "" if len(shown) == len(evals) else f" ({len(shown)} of {len(evals)} shown)"
        lines.append(f"team evaluation return (sum over agents, {summary['evaluation_policy']}){note}:")
        known = summary["optimal_team_return"] is not None
        lines.append(f"  {'step':>9}  {'team return':>12}" + (f"  {'of optimum':>10}" if known else ""))
        lines += [f"  {evals[i]['step']:>9d}  {evals[i]['team_return']:>12.3f}"
                  + (f"  {evals[i]['optimal_share']:>10.1%}" if known else "") for i in shown]
        best = summary["best"]
        lines.append(f"final team return {summary['final_team_return']:.3f} at step {evals[-1]['step']}; "
                     f"best {best['team_return']:.3f} at step {best['step']}")
        random_return = summary["random_team_return"]
        at_random = "" if random_return is None else f"agents acting at random collect {random_return:.1f}"
        if known:
            lines.append(f"The team collects {summary['final_optimal_share']:.1%} of the best possible return "
                         f"({summary['optimal_team_return']:.1f}, every agent going straight to its best site)"
                         + (f"; {at_random}" if at_random else "") + ".")
        elif at_random:
            lines.append(f"The team's final return is {summary['final_team_return']:.1f}; {at_random} (this world's "
                         "optimum is not known).")
    else:
        lines.append("no evaluations recorded yet (the first runs when warm-up ends).")
    model = summary["model_error"]
    if model is not None:
        lines.append(f"model held-out RMSE (mean over agents): {_fmt(model['first_holdout_rmse'], '.4g')} at step "
                     f"{model['first_step']} -> {_fmt(model['last_holdout_rmse'], '.4g')} at step {model['last_step']} "
                     f"({model['updates']} updates); on the last evaluation's episodes {_fmt(model['final_eval_rmse'], '.4g')}")
    consensus = summary["consensus"]
    if consensus is not None:
        rounds = (str(consensus["rounds_min"]) if consensus["rounds_min"] == consensus["rounds_max"]
                  else f"{consensus['rounds_min']}-{consensus['rounds_max']}")
        lines.append(f"consensus: {rounds} gossip rounds per model update; largest final residual "
                     f"{_fmt(consensus['max_residual'], '.2e')} (at the last update {_fmt(consensus['last_max_residual'], '.2e')})")
    timing = summary["timing"]
    if timing is not None:
        phases = "  ".join(f"{phase} {seconds:.1f}" for phase, seconds in timing["seconds"].items())
        lines.append(f"seconds per phase up to step {timing['step']} (mean over agents): {phases}")
        waiting = f"; {timing['waiting_s']:.1f} s of it waiting for neighbours" if timing["waiting_s"] is not None else ""
        lines.append(f"  total {timing['total_s']:.1f} s, {_fmt(timing['steps_per_s'], '.1f')} steps/s per agent{waiting}")
    lines += [f"WARNING: {warning}" for warning in summary["warnings"]]
    return "\n".join(lines)


def format_comparison(summaries: list[dict[str, Any]]) -> str:
    """Final team return per label over its runs (mean, std, min, max)."""
    lines = ["final team return by setting:"]
    for label, members in _group(summaries, lambda s: s["label"]).items():
        finals = np.array([s["final_team_return"] for s in members if s["final_team_return"] is not None])
        if not finals.size:
            lines.append(f"  {label}: no evaluations in {len(members)} run(s)")
            continue
        lines.append(f"  {label}: {finals.mean():.3f} +- {finals.std():.3f} (min {finals.min():.3f}, "
                     f"max {finals.max():.3f}) over {finals.size} run(s)")
    return "\n".join(lines)


def _group(items: list[Any], key: Callable[[Any], str]) -> dict[str, list[Any]]:
    """Items by key, in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# ---------------------------------------------------------------------- the plot


def plot_learning_curves(runs: list[Run], path: Path) -> Any:
    """Write team evaluation return against environment steps per agent, one colour per label: the
    mean over that label's runs and, for two or more runs, a min-max band; below it the model's
    held-out RMSE when any run has one. Returns the matplotlib Figure. Needs matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works without a display

    groups = _group(runs, lambda r: run_label(r.config))
    with_model = any(np.isfinite(holdout_curve(r)[1]).any() for r in runs)
    fig = Figure(figsize=(7.0, 6.5 if with_model else 4.0), layout="constrained")
    axes = fig.subplots(2 if with_model else 1, 1, sharex=True, squeeze=False)[:, 0]
    for index, (label, members) in enumerate(groups.items()):
        colour = f"C{index}"
        legend = f"{label} ({len(members)} run{'s' if len(members) > 1 else ''})"
        _draw_band(axes[0], *_aligned([team_curve(r) for r in members]), colour, legend)
        model_curves = [curve for curve in map(holdout_curve, members) if curve[0].size]
        if with_model and model_curves:
            _draw_band(axes[1], *_aligned(model_curves), colour, label)
    axes[0].set(ylabel="team evaluation return", title="mean over runs; band: min to max")
    axes[0].legend(loc="best", fontsize="small")
    if with_model:
        axes[1].set(ylabel="model held-out RMSE", yscale="log")
    axes[-1].set(xlabel="environment steps per agent")
    fig.savefig(path, dpi=120)
    return fig


def _aligned(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps every curve has, values (n_curves, n_steps) at those steps)."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    return common, np.stack([values[np.isin(steps, common)] for steps, values in curves])


def _draw_band(ax: Any, steps: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    ax.plot(steps, values.mean(axis=0), color=colour, label=label)
    if values.shape[0] > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, linewidth=0)


# ---------------------------------------------------------------------- the animation


class Animation(NamedTuple):
    step: int
    """Checkpoint step the actors come from."""
    frames: int
    team_return: float
    """Team return of the animated episode (sum of the agents' own rewards)."""


def newest_common_checkpoint(run_dir: Path, agents: int) -> int:
    """The newest step at which every rank has a checkpoint file."""
    common = set(local_steps(run_dir, 0))
    for rank in range(1, agents):
        common &= set(local_steps(run_dir, rank))
    if not common:
        raise ReportError(f"{Path(run_dir) / 'checkpoints'} has no step that all {agents} ranks have checkpointed; "
                          "--gif needs every agent's actor from one step.")
    return max(common)


def load_actors(run: Run, step: int) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Each rank's deterministic policy (obs (2,) -> action (2,)) from its checkpoint at `step`, on the CPU."""
    from odmar_mpi.learners.sac import build_sac
    from odmar_mpi.worlds import make_world

    actors = []
    for rank in range(len(run.ranks)):
        # The same networks as the learner builds them, so the checkpoint's state dict fits.
        sac = build_sac(run.config, make_world(run.config, rank, len(run.ranks)), "cpu", seed=0)
        sac.load_state_dict(load_checkpoint(run.path, rank, step)["learner"]["sac"])
        actors.append(lambda obs, sac=sac: sac.act(obs, deterministic=True))
    return actors


def rollout_frames(cfg: Config, actors: list[Callable[[np.ndarray], np.ndarray]], every: int = GIF_EVERY,
                   size: int = GIF_SIZE) -> tuple[list[Any], float]:
    """One episode of the whole team in `env.TeamEnv` (agent i acts with `actors[i]`).

    Returns (PIL images at t = 0, every, 2*every, ... and the last step, team return of the episode).
    """
    from env import TeamEnv

    team = TeamEnv(n_agents=len(actors), n_rewards=cfg.env.n_rewards, action_penalty=cfg.env.action_penalty,
                   episode_length=cfg.env.episode_length, reward_sharing=cfg.env.reward_sharing, seed=cfg.run.seed)
    obs, _ = team.reset()
    total = 0.0
    frames = [_frame(team, total, size)]
    while team.agents:
        obs, _, _, _, infos = team.step({agent: act(obs[agent]) for agent, act in zip(team.agents, actors)})
        total += sum(info["own_reward"] for info in infos.values())
        if team.t % every == 0 or not team.agents:
            frames.append(_frame(team, total, size))
    return frames, total


def _frame(team: Any, team_return: float, size: int) -> Any:
    """The world with trails so far, captioned with the step and the team return collected so far."""
    from PIL import Image, ImageDraw

    from env import render_rgb

    image = Image.fromarray(render_rgb(team.positions, team.sites, team.values, size=size,
                                       trails=team.trails[: team.t + 1]))
    # The caption also makes every frame distinct: Pillow merges identical consecutive GIF frames.
    ImageDraw.Draw(image).text((4, 4), f"t = {team.t}   team return {team_return:.2f}", fill=(0, 0, 0))
    return image


def write_gif(run: Run, path: Path, every: int = GIF_EVERY, size: int = GIF_SIZE) -> Animation:
    """Animate the trained team: the newest common checkpoint's actors, one deterministic episode."""
    step = newest_common_checkpoint(run.path, len(run.ranks))
    frames, team_return = rollout_frames(run.config, load_actors(run, step), every, size)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // GIF_FPS, loop=0)
    return Animation(step=step, frames=len(frames), team_return=team_return)


# ---------------------------------------------------------------------- entry points


def final_report(run_dir: Path) -> None:
    """End of `python -m odmar_mpi.run`: the summary table on stdout and `run_dir/learning_curve.png`
    (or one line saying how to get matplotlib). A records problem is printed, not raised: training succeeded."""
    try:
        run = load_run(run_dir)
    except ReportError as err:
        print(f"odmar_mpi.report: error: {err}", file=sys.stderr, flush=True)
        return
    print(format_table(summarise(run)), flush=True)
    try:
        import matplotlib  # noqa: F401  (only to learn whether the plot can be drawn)
    except ImportError:
        print("no learning-curve plot: matplotlib is not installed (pip install .[plot] would give it).", flush=True)
        return
    path = Path(run_dir) / "learning_curve.png"
    plot_learning_curves([run], path)
    print(f"learning curve: {path}", flush=True)


EPILOG = """\b
Examples:
  python -m odmar_mpi.report runs/20261124-101500
  python -m odmar_mpi.report runs/odmar-seed* runs/sac-seed* --plot compare.png
  python -m odmar_mpi.report runs/20261124-101500 --json
  python -m odmar_mpi.report runs/20261124-101500 --gif team.gif
"""


def fail(message: str) -> NoReturn:
    click.echo(f"odmar_mpi.report: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (one object; a list of them for several runs).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write learning curves of all runs to this image file, grouped by setting (e.g. curves.png).")
@click.option("--gif", type=click.Path(dir_okay=False, path_type=Path),
              help="Animate one run's trained team in one deterministic episode (newest checkpoint) to this GIF.")
def main(run_dirs: tuple[Path, ...], as_json: bool, plot: Path | None, gif: Path | None) -> None:
    """Summarise runs of python -m odmar_mpi.run from their per-rank records: team evaluation
    return, model error, consensus residual, time per phase."""
    if gif is not None and len(run_dirs) != 1:
        fail(f"--gif animates one run; pass a single RUN_DIR (got {len(run_dirs)}).")
    try:
        runs = [load_run(run_dir) for run_dir in run_dirs]
    except ReportError as err:
        fail(str(err))
    summaries = [summarise(run) for run in runs]
    if as_json:
        click.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    else:
        tables = [format_table(summary) for summary in summaries]
        click.echo("\n\n".join(tables + ([format_comparison(summaries)] if len(summaries) > 1 else [])))
    # Notes go to stderr so that --json output stays parseable.
    if plot is not None:
        try:
            plot_learning_curves(runs, plot)
        except ImportError:
            fail("--plot needs matplotlib: pip install .[plot]")
        click.echo(f"learning curves: {plot}", err=True)
    if gif is not None:
        try:
            animation = write_gif(runs[0], gif)
        except ImportError as err:
            fail(f"--gif needs the package {err.name!r} (Pillow comes with .[plot], PettingZoo with .[test]).")
        except (ReportError, CheckpointError) as err:
            fail(str(err))
        click.echo(f"animation: {gif}, {animation.frames} frames, team return {animation.team_return:.3f} "
                   f"with the actors of step {animation.step}", err=True)


if __name__ == "__main__":
    main()
