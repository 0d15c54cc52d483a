"""Plots, with the statistics of `odmar_mpi.report.compare`: IQM over runs and 95% bootstrap bands.

- `plot_run`: one run's learning curve (what `python -m odmar_mpi.run` writes as learning_curve.png): the
  team evaluation return with both ends of the world's scale (the optimum or the reference policy's return,
  uniformly random actions: horizontal lines, or a point per evaluation where they vary by evaluation), a
  second y-axis as a share of the optimum where there is one, the world's metric and the model's held-out
  error below where recorded.
- `plot_learning_curves`: several runs grouped by their label, the IQM per evaluation step with a band.
- `plot_comparison`: the settings of a comparison (`compare_settings`), IQM over seeds with bands.

Only matplotlib's object API (no pyplot): no global backend state, works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from odmar_mpi.report.compare import BOOTSTRAP, figure_name, iqm_curve
from odmar_mpi.report.runs import Run, eval_column, holdout_curve, run_label, team_curve
from odmar_mpi.report.summary import evaluation_policy, metric_words
from odmar_mpi.worlds import world_optimum

RANDOM_COLOUR, REFERENCE_COLOUR, OPTIMUM_COLOUR = "C3", "C2", "k"
CONSTANT_RTOL = 1e-9  # references that vary less than this (relative) across evaluations are one line


def _figure(rows: int, height: float) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, height), layout="constrained")
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _group(items: list[Any], key: Callable[[Any], str]) -> dict[str, list[Any]]:
    """Items by key, in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# ---------------------------------------------------------------------- one run


def plot_run(run: Run, path: Path) -> Any:
    """One run's learning curve with the ends of its world's scale (see the module docstring); returns the
    matplotlib Figure. Needs matplotlib."""
    steps, team = team_curve(run)
    optimum = world_optimum(run.config, len(run.ranks))
    metric = eval_column(run, "metric")
    with_metric = metric is not None and bool(np.isfinite(metric).any())
    with_model = bool(np.isfinite(holdout_curve(run)[1]).any())
    fig, axes = _figure(1 + with_metric + with_model, 4.2 + 2.3 * (with_metric + with_model))
    ax = axes[0]
    ax.plot(steps, team, marker="o", markersize=3, color="C0", label="team (sum over agents)")
    if np.isfinite(optimum):
        ax.axhline(optimum, color=OPTIMUM_COLOUR, linestyle="--", linewidth=1, label=f"optimum ({optimum:.1f})")
    random, reference = eval_column(run, "random_team_return"), eval_column(run, "reference_team_return")
    if not _reference(ax, steps, random, "uniformly random actions", RANDOM_COLOUR):
        before = run.ranks[0].get("random_eval", {}).get("team_return", np.empty(0))
        if before.size:
            ax.axhline(before[0], color=RANDOM_COLOUR, linestyle=":", linewidth=1.2,
                       label=f"uniformly random actions, before training ({before[0]:.1f})")
    _reference(ax, steps, reference, "the world's reference policy", REFERENCE_COLOUR)
    ax.set(ylabel="team evaluation return", title=f"{run_label(run.config)}: {run.path.name}, {len(run.ranks)} agents "
                                                  f"({evaluation_policy(run.config)})")
    _share_axis(ax, optimum, random, reference)
    ax.legend(loc="best", fontsize="small")
    row = 1
    if with_metric:
        name = metric_words(run.metric_name or "metric")
        axes[row].plot(steps, metric, marker="o", markersize=3, color="C0", label="team")
        _reference(axes[row], steps, eval_column(run, "random_metric"), "uniformly random actions", RANDOM_COLOUR)
        _reference(axes[row], steps, eval_column(run, "reference_metric"), "the world's reference policy",
                   REFERENCE_COLOUR)
        axes[row].set(ylabel=name, ylim=(-0.03, 1.03))
        axes[row].legend(loc="best", fontsize="small")
        row += 1
    if with_model:
        axes[row].plot(*holdout_curve(run), marker="o", markersize=3, color="C1")
        axes[row].set(ylabel="model held-out RMSE\n(mean over agents)", yscale="log")
    axes[-1].set(xlabel="environment steps per agent")
    fig.savefig(path, dpi=120)
    return fig


def _reference(ax: Any, steps: np.ndarray, values: np.ndarray | None, name: str, colour: str) -> bool:
    """Draw a reference (random actions, the reference policy): one horizontal line where it is the same at every
    evaluation, else its value at each evaluation. Returns whether anything was drawn."""
    if values is None or not np.isfinite(values).any():
        return False
    finite = values[np.isfinite(values)]
    if np.ptp(finite) <= CONSTANT_RTOL * max(1.0, float(np.abs(finite).max())):
        ax.axhline(finite[0], color=colour, linestyle=":", linewidth=1.2, label=f"{name} ({finite[0]:.2f})")
    else:
        ax.plot(steps, values, color=colour, linestyle=":", marker="_", markersize=8,
                label=f"{name}, on each evaluation's episodes")
    return True


def _share_axis(ax: Any, optimum: float, random: np.ndarray | None, reference: np.ndarray | None) -> None:
    """A second y-axis: the share of the optimum where there is one; else, where random actions and the reference
    policy score the same at every evaluation, the share of the way from one to the other."""
    from matplotlib.ticker import PercentFormatter

    if np.isfinite(optimum) and optimum > 0:
        share = ax.secondary_yaxis("right", functions=(lambda y: y / optimum, lambda s: s * optimum))
        share.yaxis.set_major_formatter(PercentFormatter(1.0))
        share.set_ylabel("share of the optimum")
        return
    ends = [_constant(values) for values in (random, reference)]
    if None not in ends and ends[0] != ends[1]:
        low, high = ends
        way = ax.secondary_yaxis("right", functions=(lambda y: (y - low) / (high - low),
                                                     lambda s: low + s * (high - low)))
        way.set_ylabel("share of the way from random\nactions to the reference policy")


def _constant(values: np.ndarray | None) -> float | None:
    if values is None or not np.isfinite(values).all() or not values.size:
        return None
    return float(values[0]) if np.ptp(values) <= CONSTANT_RTOL * max(1.0, float(np.abs(values).max())) else None


# ---------------------------------------------------------------------- several runs


def plot_learning_curves(runs: list[Run], path: Path) -> Any:
    """Team evaluation return against environment steps per agent, one colour per label: the IQM over that
    label's runs at each step they all evaluated and, for two or more runs, the 95% bootstrap band; below it
    the model's held-out RMSE when any run has one. Returns the matplotlib Figure. Needs matplotlib."""
    groups = _group(runs, lambda r: run_label(r.config))
    with_model = any(np.isfinite(holdout_curve(r)[1]).any() for r in runs)
    fig, axes = _figure(2 if with_model else 1, 6.5 if with_model else 4.0)
    for index, (label, members) in enumerate(groups.items()):
        colour = f"C{index}"
        legend = f"{label} ({len(members)} run{'s' if len(members) > 1 else ''})"
        _draw_iqm(axes[0], *_aligned([team_curve(r) for r in members]), colour, legend)
        model_curves = [curve for curve in map(holdout_curve, members) if curve[0].size]
        if with_model and model_curves:
            _draw_iqm(axes[1], *_aligned(model_curves), colour, label)
    banded = any(len(members) > 1 for members in groups.values())
    title = (f"IQM over each setting's runs; band: 95% bootstrap interval ({BOOTSTRAP} resamples)" if banded
             else "one run per setting")
    axes[0].set(ylabel="team evaluation return", title=title)
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


def _draw_iqm(ax: Any, steps: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    centre, low, high = iqm_curve(values)
    ax.plot(steps, centre, color=colour, label=label)
    if values.shape[0] > 1:
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)


# ---------------------------------------------------------------------- a comparison


def plot_comparison(comparison: dict[str, Any], path: Path, dpi: int = 110) -> Any:
    """Each setting's curve of a comparison (`compare_settings`): the IQM over seeds of its final figure at each
    evaluation against training steps after warm-up, with the 95% bootstrap band; the ends of the scale as
    horizontal lines where the figure is a share. Returns the matplotlib Figure. Needs matplotlib."""
    from matplotlib.ticker import PercentFormatter

    fig, axes = _figure(1, 4.2)
    ax = axes[0]
    kinds = {s["figure"] for s in comparison["settings"]}
    for index, setting in enumerate(comparison["settings"]):
        curve = setting["curve"]
        if not curve or not curve["steps"]:
            continue
        seeds = len(setting["seeds"])
        label = f"{setting['name']} ({seeds} seed{'s' if seeds != 1 else ''})"
        if len(kinds) > 1:
            label += f": {figure_name(setting['figure'])}"
        ax.plot(curve["steps"], curve["iqm"], color=f"C{index}", label=label)
        if seeds > 1:
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=f"C{index}", alpha=0.2, linewidth=0)
    if kinds == {"optimal_share"}:
        ax.axhline(1.0, color=OPTIMUM_COLOUR, linestyle="--", linewidth=1, label="optimum")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif kinds == {"reference_share"}:
        ax.axhline(0.0, color=RANDOM_COLOUR, linestyle=":", linewidth=1.2, label="uniformly random actions")
        ax.axhline(1.0, color=REFERENCE_COLOUR, linestyle=":", linewidth=1.2, label="the world's reference policy")
    unit = figure_name(next(iter(kinds))) if len(kinds) == 1 else "the figure named in the legend"
    ylabel = "team evaluation return" + ("" if kinds == {"team_return"} else f"\n({_wrap(unit)})")
    ax.set(xlabel="training steps per agent after warm-up", ylabel=ylabel,
           title=f"IQM over seeds; band: 95% bootstrap interval ({BOOTSTRAP} resamples)")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=dpi)
    return fig


def _wrap(text: str, width: int = 45) -> str:
    words, lines = text.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) + 1 > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    return "\n".join(lines)

