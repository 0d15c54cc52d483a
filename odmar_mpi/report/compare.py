"""Settings compared over seeds, the way rliable does (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice"): the interquartile mean (IQM) over seeds of each setting's final figure with a 95%
percentile bootstrap interval (seeds resampled with replacement, 2000 times; with one task per setting the
stratified bootstrap is this one), every seed's own value (no seed is ever dropped: a planned seed without
records is listed as missing), the steps to 90/95/98% of the optimum where the world has one, and learning
curves as the IQM per evaluation with its 95% band.

The final figure of a seed is, in this order of preference (the first that every seed of a setting has):
the share of the world's optimum (`optimal_share`); the share of the way from uniformly random actions to
the world's reference policy on the same episodes (`reference_share`); the world's episode metric (win
rate, arrival rate); the raw team return. Steps are training steps per agent after warm-up.

The input is one summary per seed (`odmar_mpi.report.summary.summarise`, or the seed files that
benchmarks/learning.py keeps); `settings_from_folders` reads them from a sweep folder
(DIR/<setting>/seed<S>/, with DIR/sweep.json naming the settings and seeds) or from run folders.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from odmar_mpi.report.runs import ReportError, is_run_folder, load_run
from odmar_mpi.report.summary import SHARES, metric_words, summarise

BOOTSTRAP = 2000
"""Bootstrap resamples of the seeds."""
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # the resamples are the same on every call: tables are reproducible
STEPS = "training steps per agent after warm-up"
FIXED_FIGURES = {
    "optimal_share": "share of the optimum",
    "reference_share": "share of the way from uniformly random actions to the world's reference policy "
                       "(on each evaluation's own episodes)",
    "team_return": "team return",
}
_SEED_FOLDER = re.compile(r"seed(\d+)$")


# ---------------------------------------------------------------------- statistics


def iqm(values: Any) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's scipy.stats.trim_mean(x, 0.25))."""
    return float(_iqm_rows(np.asarray(values, dtype=float)[None, :])[0])


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """The IQM of every row of `samples` (rows, n), over its last axis."""
    values = np.sort(samples, axis=-1)
    n = values.shape[-1]
    cut = int(math.floor(0.25 * n))
    middle = values[..., cut:n - cut] if n - 2 * cut > 0 else values
    return middle.mean(axis=-1)


def bootstrap_ci(values: Any, reps: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile bootstrap interval of the IQM over `values` (one per seed), resampled with replacement."""
    low, high = bootstrap_bands(np.asarray(values, dtype=float)[:, None], reps, seed)
    return float(low[0]), float(high[0])


def bootstrap_bands(values: np.ndarray, reps: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the 95% percentile bootstrap interval of the IQM over seeds, per column of `values`
    (seeds, points): every column resampled with the same seed indices. One seed: the interval is its value."""
    values = np.asarray(values, dtype=float)
    seeds = values.shape[0]
    if seeds < 2:
        return values[0].copy(), values[0].copy()
    indices = np.random.default_rng(seed).integers(seeds, size=(reps, seeds))
    stats = _iqm_rows(np.moveaxis(values[indices], 1, -1))  # (reps, points)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(stats, [tail, 100 - tail], axis=0)
    return low, high


def iqm_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IQM, low, high) per column of `values` (seeds, points)."""
    low, high = bootstrap_bands(values)
    return _iqm_rows(np.asarray(values, dtype=float).T), low, high


def steps_to_share(steps: np.ndarray, shares: np.ndarray, share: float) -> int | None:
    """The first of `steps` whose share reaches `share` (None if none does)."""
    reached = np.flatnonzero(np.asarray(shares) >= share)
    return int(steps[reached[0]]) if reached.size else None


# ---------------------------------------------------------------------- a seed's figures


def figure_name(kind: str) -> str:
    """What a final figure is, in words (a metric's kind is its name, e.g. 'win_rate')."""
    return FIXED_FIGURES.get(kind) or metric_words(kind)


def figures_of(summary: dict[str, Any]) -> list[str]:
    """The final figures a seed's summary has, in the order of preference."""
    kinds = []
    if summary.get("optimal_team_return") is not None and summary.get("final_optimal_share") is not None:
        kinds.append("optimal_share")
    if summary.get("final_reference_share") is not None:
        kinds.append("reference_share")
    metric = summary.get("metric")
    if metric and summary.get(f"final_{metric}") is not None:
        kinds.append(metric)
    if summary.get("final_team_return") is not None:
        kinds.append("team_return")
    return kinds


def final_figure(summary: dict[str, Any], kind: str) -> float | None:
    key = {"optimal_share": "final_optimal_share", "reference_share": "final_reference_share",
           "team_return": "final_team_return"}.get(kind, f"final_{kind}")
    return summary.get(key)


def random_figure(summary: dict[str, Any], kind: str) -> float | None:
    """Uniformly random actions on the same scale: 0 for the share of the way to the reference policy."""
    random_return = summary.get("random_team_return")
    if kind == "optimal_share":
        return None if random_return is None else random_return / summary["optimal_team_return"]
    if kind == "reference_share":
        return 0.0
    if kind == "team_return":
        return random_return
    return summary.get(f"random_{kind}")


def figure_curve(summary: dict[str, Any], kind: str) -> dict[int, float]:
    """{training step after warm-up: the figure at that evaluation} (evaluations without it left out)."""
    key = {"optimal_share": "optimal_share", "reference_share": "reference_share",
           "team_return": "team_return"}.get(kind, kind)
    warmup = int(summary.get("warmup_steps") or 0)
    return {int(e["step"]) - warmup: float(e[key]) for e in summary["eval"] if e.get(key) is not None}


def seed_of(summary: dict[str, Any]) -> int | None:
    """The seed of a summary: its own key, else the seed<S> name of its run folder (older seed files)."""
    if summary.get("seed") is not None:
        return int(summary["seed"])
    match = _SEED_FOLDER.search(Path(str(summary.get("run", ""))).name)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------- settings


@dataclass
class SettingRuns:
    """One setting's seeds: a summary per seed that has records, and the planned seeds without any."""

    name: str
    summaries: list[dict[str, Any]]
    missing: dict[str, str] = field(default_factory=dict)
    """{seed (or run folder name): why it has no summary} for planned seeds or folders without readable records."""


def compare_settings(settings: list[SettingRuns], folders: list[str] | None = None) -> dict[str, Any]:
    """The comparison as a JSON-ready dict: how it was computed, and one entry per setting (`compare_setting`)."""
    return {"folders": folders or [], "statistic": "interquartile mean (IQM) over seeds",
            "interval": f"{CONFIDENCE:.0%} percentile bootstrap over seeds, {BOOTSTRAP} resamples",
            "steps": STEPS, "settings": [compare_setting(setting) for setting in settings]}


def compare_setting(setting: SettingRuns) -> dict[str, Any]:
    """One setting over its seeds.

    Keys: name, label, algorithm, env, agents; figure (its kind: optimal_share, reference_share, a metric's
    name or team_return) and figure_name (in words); seeds (those with a final figure); iqm, ci95 [low, high];
    per_seed (every seed with records: seed, run, final, final_team_return, random, complete, wall_seconds,
    steps_to_share); random_mean (random actions on the same scale, mean over seeds); steps_to_share (optimum
    only: per share, the median over seeds and every seed's, None = never); curve (steps after warm-up that
    every seed evaluated, the IQM and the 95% band there); missing ({seed: why}); without_evaluations;
    incomplete (seeds whose run has not done all its steps); wall_seconds_median.
    """
    summaries = sorted(setting.summaries, key=lambda s: (seed_of(s) is None, seed_of(s) or 0))
    evaluated = [s for s in summaries if s.get("eval")]
    common = [kind for kind in _preference(evaluated) if all(kind in figures_of(s) for s in evaluated)]
    kind = common[0] if common else "team_return"
    first = summaries[0] if summaries else {}
    entry: dict[str, Any] = {
        "name": setting.name, "label": first.get("label"), "algorithm": first.get("algorithm"),
        "env": first.get("env"), "agents": first.get("agents"), "figure": kind, "figure_name": figure_name(kind),
        "seeds": [seed_of(s) for s in evaluated], "iqm": None, "ci95": None, "per_seed": [], "random_mean": None,
        "steps_to_share": None, "curve": None,
        "missing": dict(setting.missing),
        "without_evaluations": [seed_of(s) for s in summaries if not s.get("eval")],
        "incomplete": [seed_of(s) for s in summaries if s.get("complete") is False],
        "wall_seconds_median": None,
    }
    for s in summaries:
        entry["per_seed"].append({
            "seed": seed_of(s), "run": s.get("run"), "final": final_figure(s, kind) if s.get("eval") else None,
            "final_team_return": s.get("final_team_return"), "random": random_figure(s, kind),
            "complete": s.get("complete"), "steps": s.get("steps"), "planned_steps": s.get("planned_steps"),
            "wall_seconds": s.get("wall_seconds"),
            "steps_to_share": _seed_steps_to_share(s) if kind == "optimal_share" else None})
    if not evaluated:
        return entry
    finals = np.array([final_figure(s, kind) for s in evaluated], dtype=float)
    entry["iqm"] = iqm(finals)
    entry["ci95"] = list(bootstrap_ci(finals))
    randoms = [r for r in (random_figure(s, kind) for s in evaluated) if r is not None]
    entry["random_mean"] = float(np.mean(randoms)) if randoms else None
    if kind == "optimal_share":
        entry["steps_to_share"] = {f"{share:g}": _median_steps(evaluated, share) for share in SHARES}
    entry["curve"] = _curve(evaluated, kind)
    walls = [s["wall_seconds"] for s in evaluated if s.get("wall_seconds")]
    entry["wall_seconds_median"] = float(np.median(walls)) if walls else None
    return entry


def _preference(summaries: list[dict[str, Any]]) -> list[str]:
    metrics = [s["metric"] for s in summaries if s.get("metric")]
    return ["optimal_share", "reference_share", *dict.fromkeys(metrics), "team_return"]


def _seed_steps_to_share(summary: dict[str, Any]) -> dict[str, int | None]:
    """Training steps after warm-up to each share of the optimum (None: never reached)."""
    warmup = int(summary.get("warmup_steps") or 0)
    reached = summary.get("steps_to_share") or {}
    return {f"{share:g}": (None if reached.get(f"{share:g}") is None else reached[f"{share:g}"] - warmup)
            for share in SHARES}


def _median_steps(summaries: list[dict[str, Any]], share: float) -> dict[str, Any]:
    per_seed = [_seed_steps_to_share(s)[f"{share:g}"] for s in summaries]
    median = float(np.median([math.inf if t is None else t for t in per_seed]))
    return {"median": median if math.isfinite(median) else None, "per_seed": per_seed}


def _curve(summaries: list[dict[str, Any]], kind: str) -> dict[str, list[float]]:
    """IQM and 95% band of the figure at the steps (after warm-up) that every seed evaluated."""
    per_seed = [figure_curve(s, kind) for s in summaries]
    steps = sorted(set.intersection(*(set(curve) for curve in per_seed)))
    if not steps:
        return {"steps": [], "iqm": [], "low": [], "high": []}
    values = np.array([[curve[t] for t in steps] for curve in per_seed])
    centre, low, high = iqm_curve(values)
    return {"steps": steps, "iqm": centre.tolist(), "low": low.tolist(), "high": high.tolist()}


# ---------------------------------------------------------------------- reading folders


def summarise_seed(run_dir: Path) -> dict[str, Any]:
    """A run folder's summary with the wall time its sweep measured (the file `wall_seconds`, where written)."""
    summary = summarise(load_run(run_dir))
    wall = Path(run_dir) / "wall_seconds"
    summary["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    return summary


def settings_from_folders(folders: list[Path]) -> list[SettingRuns]:
    """The settings in `folders`, in order: a sweep folder gives its settings (from DIR/sweep.json, which names
    them and their seeds, else one per subfolder DIR/<setting>/ holding run folders); run folders, given
    themselves or lying directly in a folder given, are grouped by their label. ReportError names a folder
    holding no runs, or a setting name two folders share."""
    from odmar_mpi.sweep import SWEEP_FILE, load_sweep, set_aside

    settings: dict[str, SettingRuns] = {}
    origin: dict[str, Path] = {}

    def setting(name: str, folder: Path) -> SettingRuns:
        if name in settings and origin[name] != folder:
            raise ReportError(f"setting {name!r} is in both {origin[name]} and {folder}; compare folders whose "
                              "settings have different names.")
        origin.setdefault(name, folder)
        return settings.setdefault(name, SettingRuns(name, []))

    def add_run(name: str, folder: Path, run_dir: Path, seed: int | str | None = None) -> None:
        summary, why = _read_seed(run_dir)
        if summary is not None:
            setting(name, folder).summaries.append(summary)
        else:
            setting(name, folder).missing[str(run_dir.name if seed is None else seed)] = why

    for folder in map(Path, folders):
        if is_run_folder(folder):
            summary = summarise_seed(folder)
            setting(summary["label"], Path("<run folders>")).summaries.append(summary)
        elif (folder / SWEEP_FILE).is_file():
            sweep = load_sweep(folder)
            for name in sweep.names():
                setting(name, folder)
            for name, seed in sweep.runs:
                add_run(name, folder, sweep.run_dir(folder, name, seed), seed)
        else:
            found = False
            for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
                if is_run_folder(sub):  # a folder of run folders: grouped by label
                    summary, why = _read_seed(sub)
                    if summary is not None:
                        setting(summary["label"], Path("<run folders>")).summaries.append(summary)
                        found = True
                    continue
                runs = ([run for run in sorted(sub.iterdir()) if is_run_folder(run) and not set_aside(run)]
                        if sub.is_dir() else [])
                for run in runs:
                    add_run(sub.name, folder, run)
                found = found or bool(runs)
            if not found:
                raise ReportError(f"{folder} holds no runs: --compare takes a sweep folder (DIR/<setting>/seed<S>/ "
                                  "run folders, as python -m odmar_mpi.sweep writes them) or run folders.")
    return list(settings.values())


def _read_seed(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """(summary, "") of a run folder, or (None, why there is none)."""
    if not run_dir.is_dir():
        return None, f"not started ({run_dir} does not exist)"
    if not is_run_folder(run_dir):
        return None, f"no records yet in {run_dir} (stopped before its first checkpoint?)"
    try:
        return summarise_seed(run_dir), ""
    except ReportError as err:
        return None, str(err)


# ---------------------------------------------------------------------- in words


def format_figure(kind: str) -> Callable[[float | None], str]:
    """How a figure of `kind` is printed: shares of the optimum in per cent, returns to 0.1, others to 0.01."""
    def fmt(value: float | None) -> str:
        if value is None:
            return "n/a"
        if kind == "optimal_share":
            return f"{100 * value:.1f}%"
        return f"{value:.1f}" if kind == "team_return" else f"{value:.2f}"
    return fmt


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison as text: per setting its final figure (IQM, interval, every seed), random actions on the
    same scale, steps to shares of the optimum, and the seeds that are missing or not complete."""
    lines = [f"Final figure per setting: {comparison['statistic']}, {comparison['interval']}; every seed listed; "
             f"steps are {comparison['steps']}."]
    for s in comparison["settings"]:
        fmt = format_figure(s["figure"])
        what = ", ".join(str(x) for x in (s["label"], f"{s['agents']} agents" if s["agents"] else None, s["env"]) if x)
        lines.append(f"{s['name']} ({what or 'no runs'}): final {s['figure_name']} over {len(s['seeds'])} seed(s)")
        if s["iqm"] is not None:
            seeds = ", ".join(f"s{p['seed']} {fmt(p['final'])}" for p in s["per_seed"] if p["final"] is not None)
            lines.append(f"  IQM {fmt(s['iqm'])}, 95% CI [{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]; per seed: {seeds}")
        if s["random_mean"] is not None and s["figure"] != "reference_share":
            lines.append(f"  agents acting at random: {fmt(s['random_mean'])} (mean over seeds)")
        if s["steps_to_share"] is not None:
            shares = " / ".join(f"{100 * float(share):g}%" for share in s["steps_to_share"])
            medians = " / ".join(_steps(v["median"]) for v in s["steps_to_share"].values())
            lines.append(f"  steps to {shares} of the optimum, median over seeds: {medians}")
            per_seed = ", ".join(f"s{p['seed']} " + " / ".join(_steps(v) for v in p["steps_to_share"].values())
                                 for p in s["per_seed"] if p["steps_to_share"] is not None)
            lines.append(f"    per seed: {per_seed}")
        for seed, why in s["missing"].items():
            lines.append(f"  seed {seed}: missing, {why}")
        if s["without_evaluations"]:
            lines.append(f"  seed(s) {', '.join(map(str, s['without_evaluations']))}: no evaluation yet")
        incomplete = [p for p in s["per_seed"] if p["complete"] is False]
        if incomplete:
            lines.append("  not complete (still running, or stopped: continue the sweep): "
                         + ", ".join(f"s{p['seed']} at step {p['steps']} of {p['planned_steps']}" for p in incomplete))
    return "\n".join(lines)


def _steps(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def markdown_table(comparison: dict[str, Any]) -> list[str]:
    """The comparison as a markdown table for docs (benchmarks/learning.py --doc): per setting the seeds, IQM,
    95% CI, every seed's value, random actions, median steps to 90/95/98% of the optimum (where every setting
    has an optimum) and the median wall time per run."""
    settings = comparison["settings"]
    kinds = {s["figure"] for s in settings}
    unit = figure_name(next(iter(kinds))) if len(kinds) == 1 else "figure (named per setting)"
    with_optimum = kinds == {"optimal_share"}
    reach_header = " median steps to 90% / 95% / 98% |" if with_optimum else ""
    lines = [f"Final {unit} per setting: interquartile mean (IQM) over seeds with a 95% bootstrap confidence "
             "interval, and every seed's own value.", "",
             f"| setting | seeds | IQM | 95% CI | per seed | random policy |{reach_header} wall time per run |",
             "|---|---|---|---|---|---|" + "---|" * bool(reach_header) + "---|"]
    for s in settings:
        if s["iqm"] is None:
            continue
        fmt = format_figure(s["figure"])
        name = s["name"] if len(kinds) == 1 else f"{s['name']} ({s['figure_name']})"
        random_text = fmt(s["random_mean"])
        if s["random_mean"] is None:
            random_text = "n/a"
        elif s["figure"] == "reference_share":
            random_text = "0 by definition"
        elif s["figure"] == "optimal_share":
            random_text = f"{100 * s['random_mean']:.0f}%"
        reach_text = (f" {' / '.join(_steps(v['median']) for v in s['steps_to_share'].values())} |"
                      if with_optimum else "")
        wall = f"{s['wall_seconds_median'] / 60:.0f} min" if s["wall_seconds_median"] else "n/a"
        per_seed = ", ".join(f"{fmt(p['final'])} (s{p['seed']})" for p in s["per_seed"] if p["final"] is not None)
        lines.append(f"| {name} | {len(s['seeds'])} | {fmt(s['iqm'])} | [{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}] | "
                     f"{per_seed} | {random_text} |{reach_text} {wall} |")
    return lines


def curve_caption(comparison: dict[str, Any]) -> str:
    kinds = {s["figure"] for s in comparison["settings"]}
    unit = figure_name(next(iter(kinds))) if len(kinds) == 1 else "final figure of each setting"
    return (f"Curves: IQM over seeds of the {unit} at each evaluation against training steps after warm-up; bands: "
            "95% bootstrap intervals.")
