"""One run at a glance: `summarise` (a JSON-ready dict), `format_table` (the same in words) and `final_report`
(what `python -m odmar_mpi.run` prints at the end of a run, with its learning-curve plot).

Both ends of the scale are given wherever the records have them: the world's optimum (reward collection),
uniformly random actions and the world's reference policy on the final evaluation's own episodes (coupled
worlds: every evaluation plays other episodes, so each is scored against its own), and the world's episode
metric (win rate, arrival rate) of the team, of random actions and of the reference policy.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from odmar_mpi.config import Config
from odmar_mpi.report.runs import (ReportError, Run, Tables, eval_column, finite_mean, holdout_curve, load_run,
                                   run_label, team_curve)
from odmar_mpi.telemetry import PHASES
from odmar_mpi.tensorboard import normalized_return
from odmar_mpi.worlds import world_optimum

# team_return is an exact gossip sum, identical on every rank up to summation order.
TEAM_RETURN_RTOL = 1e-9
MAX_EVAL_ROWS = 12
SHARES = (0.9, 0.95, 0.98)  # shares of the optimum whose first evaluation step the summary reports


def evaluation_policy(cfg: Config) -> str:
    """How evaluations act: PPO-trained actors may sample (`ppo.evaluation`); SAC acts with its mean."""
    sampled = cfg.uses_ppo and cfg.ppo.evaluation == "sample"
    return "actions sampled from the policy" if sampled else "deterministic policy"


def metric_words(name: str) -> str:
    """'win_rate' -> 'win rate': a metric's name as the text says it."""
    return name.replace("_", " ")


def reference_share(value: float | None, random: float | None, reference: float | None) -> float | None:
    """(value - random) / (reference - random): 0 for random actions, 1 for the reference policy; None unless
    all three are known and the two references differ."""
    if value is None or random is None or reference is None:
        return None
    return _number(normalized_return(value, random, reference))


def summarise(run: Run | Path) -> dict[str, Any]:
    """The run at a glance as a JSON-ready dict (missing or NaN numbers are None).

    Keys: run, label, evaluation_policy (how evaluations chose actions), algorithm, env, seed, agents, device,
    steps (last step in the records), planned_steps, warmup_steps, complete (the run did all its steps), eval
    (one dict per evaluation: step, team_return, optimal_share, and where recorded random_team_return,
    reference_team_return, reference_share and the metric with its random_ and reference_ values),
    optimal_team_return, final_team_return, final_optimal_share, steps_to_share (first step at 90/95/98% of the
    optimum), random_team_return and reference_team_return (of the final evaluation's episodes where recorded;
    older runs: random actions once before training, on other episodes, as random_episodes says),
    final_reference_share, metric (its name, or None) with final_<metric>, random_<metric>, reference_<metric>,
    best ({step, team_return}), model_error, consensus and timing (None for a run without model updates or
    timings), warnings (strings, e.g. ranks whose team returns disagree).
    """
    if not isinstance(run, Run):
        run = load_run(run)
    steps, team = team_curve(run)
    best = int(np.argmax(team)) if team.size else None
    optimum = world_optimum(run.config, len(run.ranks))
    final = float(team[-1]) if team.size else None
    random_return, random_episodes = _random_return(run)
    reference_return = _final(run, "reference_team_return")
    metric = _metric_name(run)
    summary = {
        "run": str(run.path),
        "label": run_label(run.config),
        "evaluation_policy": evaluation_policy(run.config),
        "algorithm": run.config.run.algorithm,
        "env": run.config.env.world,
        "seed": run.config.run.seed,
        "agents": len(run.ranks),
        "device": run.device,
        "steps": _last_step(run.ranks[0]),
        "planned_steps": run.config.total_steps,
        "warmup_steps": run.config.run.warmup_steps,
        "complete": run.complete,
        "eval": _evaluations(run, optimum, metric),
        "optimal_team_return": _number(optimum),
        "random_team_return": random_return,
        "random_episodes": random_episodes,
        "reference_team_return": reference_return,
        "final_team_return": final,
        "final_optimal_share": _number(final / optimum) if final is not None else None,
        "final_reference_share": reference_share(final, random_return if random_episodes == "final evaluation"
                                                 else None, reference_return),
        "steps_to_share": {f"{share:g}": _first_step_at(steps, team, share * optimum) for share in SHARES},
        "metric": metric,
        "best": None if best is None else {"step": int(steps[best]), "team_return": float(team[best])},
        "model_error": _model_error(run),
        "consensus": _consensus(run),
        "timing": _timing(run),
        "warnings": _team_return_disagreements(run),
    }
    if metric is not None:
        summary |= {f"final_{metric}": _final(run, "metric"), f"random_{metric}": _final(run, "random_metric"),
                    f"reference_{metric}": _final(run, "reference_metric")}
    return summary


def _final(run: Run, column: str) -> float | None:
    """The final evaluation's value of an eval column; None where not recorded (older runs) or NaN."""
    values = eval_column(run, column)
    return _number(float(values[-1])) if values is not None and values.size else None


def _random_return(run: Run) -> tuple[float | None, str | None]:
    """(uniformly random actions' team return, on which episodes): the final evaluation's own episodes where
    the records have them, else the random-policy evaluation played once before training (older runs)."""
    final = _final(run, "random_team_return")
    if final is not None:
        return final, "final evaluation"
    before = run.ranks[0].get("random_eval", {}).get("team_return", np.empty(0))
    return (float(before[0]), "before training") if before.size else (None, None)


def _metric_name(run: Run) -> str | None:
    """The world's episode metric's name where it has one and the records carry it (else None)."""
    values = eval_column(run, "metric")
    if values is None or not np.isfinite(values).any():
        return None
    return run.metric_name or "metric"


def _evaluations(run: Run, optimum: float, metric: str | None) -> list[dict[str, Any]]:
    """One dict per evaluation; the reference and metric keys only where the run recorded them."""
    steps, team = team_curve(run)
    columns = {key: eval_column(run, key) for key in ("random_team_return", "reference_team_return", "metric",
                                                      "random_metric", "reference_metric")}
    rows = []
    for i, (step, value) in enumerate(zip(steps, team)):
        row: dict[str, Any] = {"step": int(step), "team_return": float(value),
                               "optimal_share": _number(float(value) / optimum)}
        at = {key: _number(float(column[i])) for key, column in columns.items() if column is not None}
        if "random_team_return" in at:
            row["random_team_return"] = at["random_team_return"]
        if "reference_team_return" in at:
            row["reference_team_return"] = at["reference_team_return"]
            row["reference_share"] = reference_share(float(value), at.get("random_team_return"),
                                                     at["reference_team_return"])
        if metric is not None:
            row |= {metric: at.get("metric"), f"random_{metric}": at.get("random_metric"),
                    f"reference_{metric}": at.get("reference_metric")}
        rows.append(row)
    return rows


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
    final_eval = finite_mean(np.array([t["model_eval"]["model_rmse"][-1] for t in run.ranks
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


# ---------------------------------------------------------------------- in words


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
        lines += _evaluation_table(summary)
        best = summary["best"]
        lines.append(f"final team return {summary['final_team_return']:.3f} at step {evals[-1]['step']}; "
                     f"best {best['team_return']:.3f} at step {best['step']}")
        lines.append(_scale_sentence(summary))
        metric = summary.get("metric")
        if metric is not None:
            lines.append(_metric_sentence(summary, metric))
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


def _evaluation_table(summary: dict[str, Any]) -> list[str]:
    """The evaluation rows: step, team return, and whichever scales the run has (share of the optimum, share of
    the way from random actions to the reference policy, the metric)."""
    evals = summary["eval"]
    shown = eval_rows_to_show(len(evals))
    note = "" if len(shown) == len(evals) else f" ({len(shown)} of {len(evals)} shown)"
    columns = [("step", 9, lambda e: f"{e['step']:d}"), ("team return", 12, lambda e: f"{e['team_return']:.3f}")]
    if summary["optimal_team_return"] is not None:
        columns.append(("of optimum", 10, lambda e: _fmt(e["optimal_share"], ".1%")))
    if any(e.get("reference_share") is not None for e in evals):
        columns += [("random", 9, lambda e: _fmt(e.get("random_team_return"), ".2f")),
                    ("reference", 9, lambda e: _fmt(e.get("reference_team_return"), ".2f")),
                    ("of the way", 10, lambda e: _fmt(e.get("reference_share"), ".2f"))]
    metric = summary.get("metric")
    if metric is not None:
        columns.append((metric_words(metric), max(9, len(metric)), lambda e: _fmt(e.get(metric), ".2f")))
    lines = [f"team evaluation return (sum over agents, {summary['evaluation_policy']}){note}:",
             "  " + "  ".join(f"{name:>{width}}" for name, width, _ in columns)]
    lines += ["  " + "  ".join(f"{cell(evals[i]):>{width}}" for _, width, cell in columns) for i in shown]
    if len(columns) > 3 and summary["optimal_team_return"] is None:
        lines.append("  (random: uniformly random actions, reference: the world's reference policy, both on that "
                     "evaluation's episodes; of the way: (team - random) / (reference - random))")
    return lines


def _scale_sentence(summary: dict[str, Any]) -> str:
    """Where the final team return lies between the ends of the world's scale, in words."""
    final, optimum = summary["final_team_return"], summary["optimal_team_return"]
    random_return, reference = summary["random_team_return"], summary.get("reference_team_return")
    on_final = summary.get("random_episodes") == "final evaluation"
    at_random = ("" if random_return is None else f"agents acting at random collect {random_return:.1f}"
                 + (" on the same episodes" if on_final else ""))
    if optimum is not None:
        return (f"The team collects {summary['final_optimal_share']:.1%} of the best possible return "
                f"({optimum:.1f}, every agent going straight to its best site)" + (f"; {at_random}" if at_random else "")
                + ".")
    share = summary.get("final_reference_share")
    if share is not None:
        return (f"On the final evaluation's episodes the team collects {final:.1f}, {share:.2f} of the way from "
                f"uniformly random actions ({random_return:.1f}) to the world's reference policy ({reference:.1f}); "
                "this world's optimum is not known.")
    known = f"The team's final return is {final:.1f} (this world's optimum is not known)"
    if random_return is None:
        return known + "."
    if on_final:
        return f"{known}; {at_random}."
    return f"{known}; agents acting at random collected {random_return:.1f} once before training, on other episodes."


def _metric_sentence(summary: dict[str, Any], metric: str) -> str:
    words = metric_words(metric)
    final, random, reference = (summary.get(f"{which}_{metric}") for which in ("final", "random", "reference"))
    ends = [f"agents acting at random {random:.2f}" if random is not None else "",
            f"the world's reference policy {reference:.2f}" if reference is not None else ""]
    ends = [end for end in ends if end]
    return (f"{words[0].upper()}{words[1:]} on the final evaluation's episodes: {_fmt(final, '.2f')}"
            + (f" ({', '.join(ends)})" if ends else "") + ".")


# ---------------------------------------------------------------------- end of a run


def final_report(run_dir: Path) -> None:
    """End of `python -m odmar_mpi.run`: the summary table on stdout and `run_dir/learning_curve.png`
    (or one line saying how to get matplotlib). A records problem is printed, not raised: training succeeded."""
    try:
        run = load_run(run_dir)
    except ReportError as err:
        print(f"odmar_mpi.report: error: {err}", file=sys.stderr, flush=True)
        return
    summary = summarise(run)
    print(format_table(summary), flush=True)
    try:
        import matplotlib  # noqa: F401  (only to learn whether the plot can be drawn)
    except ImportError:
        print("no learning-curve plot: matplotlib is not installed (pip install .[plot] would give it).", flush=True)
        return
    from odmar_mpi.report.plots import plot_run

    path = Path(run_dir) / "learning_curve.png"
    plot_run(run, path)
    print(f"learning curve: {path}", flush=True)
