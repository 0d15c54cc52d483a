"""Learning over seeds: run a grid of settings x seeds, aggregate the way rliable does, write a report.

    python benchmarks/learning.py --setting "odmar beta=0.01=configs/odmar_beta0.01.toml" \\
        --setting "sac=configs/sac.toml" --seeds 0-4 --ranks 5 --set run.train_steps=2400 \\
        --runs runs/learning --results docs/learning --doc docs/learning.md --title "..."

Each (setting, seed) is one `mpiexec -n RANKS python -m odmar_mpi.run` job into
RUNS/<setting>/seed<S>; a job whose folder is COMPLETE is not run again, so a grid can be finished
over several sessions, and `--parallel K` runs K jobs at once (mind the cores: each job runs RANKS
processes). Every finished seed's summary is written to RESULTS/<setting>/seed<S>.json (small,
meant to be committed), and the report is built from those files alone (`--report-only` rebuilds it).

Aggregation (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"): the
interquartile mean (IQM) over seeds of the final team return (as a share of the world's optimum
where it has one), with a 95% percentile bootstrap confidence interval (resampling seeds with
replacement, 2000 times; with one task per setting the stratified bootstrap is this one); learning
curves as the IQM per evaluation step with its 95% band; median steps to 90/95/98% of the optimum.
Every seed's own number is listed too: no seed is ever dropped.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
BOOTSTRAP = 2000
SHARES = ("0.9", "0.95", "0.98")


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's scipy.stats.trim_mean(x, 0.25))."""
    values = np.sort(np.asarray(values, dtype=float))
    n = len(values)
    cut = int(math.floor(0.25 * n))
    return float(values[cut:n - cut].mean()) if n - 2 * cut > 0 else float(values.mean())


def bootstrap_ci(values: np.ndarray, statistic=iqm, reps: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of `statistic` over the runs (resampled with replacement)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    stats = [statistic(values[rng.integers(len(values), size=len(values))]) for _ in range(reps)]
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def parse_seeds(text: str) -> list[int]:
    """'0-4' or '0,2,5'."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def run_one(name: str, config: str, seed: int, ranks: int, runs: Path, overrides: list[str], log: Path) -> Path:
    """Run (or find finished) one seed of one setting; returns its run folder."""
    run_dir = runs / slug(name) / f"seed{seed}"
    if (run_dir / "COMPLETE").exists():
        return run_dir
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "odmar_mpi.run"]
    if (run_dir / "config.toml").exists():
        command += ["--resume", str(run_dir)]  # an interrupted job continues
    else:
        command += ["--config", config, "--out", str(run_dir), "--set", f"run.seed={seed}"]
    for item in overrides:
        command += ["--set", item]
    started = time.time()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {done.returncode}); see {log}")
    (run_dir / "wall_seconds").write_text(f"{time.time() - started:.0f}\n")
    return run_dir


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def seed_summary(run_dir: Path) -> dict:
    """What the report needs of one seed (read from its records)."""
    from odmar_mpi.report import summarise

    summary = summarise(run_dir)
    wall = run_dir / "wall_seconds"
    return {key: summary[key] for key in ("label", "algorithm", "env", "agents", "steps", "eval", "optimal_team_return",
                                          "random_team_return", "final_team_return", "final_optimal_share",
                                          "steps_to_share")} | {
        "run": str(run_dir), "wall_seconds": float(wall.read_text()) if wall.exists() else None,
        "warmup_steps": _warmup_steps(run_dir)}


def _warmup_steps(run_dir: Path) -> int:
    import tomllib

    return int(tomllib.loads((run_dir / "config.toml").read_text())["run"]["warmup_steps"])


def load_results(results: Path) -> dict[str, list[dict]]:
    """{setting: [seed summaries]} from RESULTS/<setting>/seed*.json, settings in the order given by order.json."""
    order = json.loads((results / "order.json").read_text()) if (results / "order.json").exists() else []
    found = {}
    for folder in sorted(results.iterdir()) if results.exists() else []:
        if folder.is_dir():
            found[folder.name] = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    names = [n for n in order if slug(n) in found] + [n for n in found if n not in map(slug, order)]
    return {name: found[slug(name)] for name in names if found.get(slug(name))}


def metric(summary: dict) -> float:
    """The final figure of one seed: share of the optimum where the world has one, else the team return."""
    share = summary.get("final_optimal_share")
    return share if share is not None and math.isfinite(share) else summary["final_team_return"]


def curve(summaries: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps after warm-up every seed has, IQM, low, high) of the per-step metric."""
    per_seed = []
    for s in summaries:
        use_share = s.get("optimal_team_return") is not None and math.isfinite(s["optimal_team_return"] or math.nan)
        per_seed.append({e["step"] - s["warmup_steps"]: (e["optimal_share"] if use_share else e["team_return"])
                         for e in s["eval"]})
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    values = np.array([[p[t] for t in steps] for p in per_seed])
    bands = np.array([bootstrap_ci(values[:, k]) for k in range(len(steps))]).reshape(-1, 2)
    return np.array(steps), np.array([iqm(values[:, k]) for k in range(len(steps))]), bands[:, 0], bands[:, 1]


def write_report(results: Path, doc: Path, title: str, notes: str) -> str:
    """docs markdown with the tables and a plot next to it; returns the text."""
    grid = load_results(results)
    if not grid:
        raise click.ClickException(f"no results in {results}")
    with_optimum = all(math.isfinite(s["optimal_team_return"] or math.nan) for runs in grid.values() for s in runs)
    unit = "share of the optimum" if with_optimum else "team return"
    # steps to a share of the optimum only where there is one (a coupled world such as simple_spread has none)
    reach_header = " median steps to 90% / 95% / 98% |" if with_optimum else ""
    lines = [f"# {title}", "", notes.strip(), "",
             f"Final {unit} per setting: interquartile mean (IQM) over seeds with a 95% bootstrap confidence "
             "interval, and every seed's own value.", "",
             f"| setting | seeds | IQM | 95% CI | per seed | random policy |{reach_header} wall time per run |",
             "|---|---|---|---|---|---|" + "---|" * bool(reach_header) + "---|"]
    fmt = (lambda v: f"{100 * v:.1f}%") if with_optimum else (lambda v: f"{v:.1f}")
    for name, runs in grid.items():
        values = np.array([metric(s) for s in runs])
        low, high = bootstrap_ci(values)
        random_returns = [s["random_team_return"] for s in runs if s["random_team_return"] is not None]
        random_text = (f"{np.mean([r / s['optimal_team_return'] for r, s in zip(random_returns, runs)]) * 100:.0f}%"
                       if with_optimum and random_returns else
                       (f"{np.mean(random_returns):.1f}" if random_returns else "n/a"))
        reach_text = ""
        if with_optimum:
            reach = []
            for share in SHARES:
                steps = [s["steps_to_share"].get(share) for s in runs]
                steps = [t - s["warmup_steps"] if t is not None else math.inf for t, s in zip(steps, runs)]
                median = float(np.median(steps))
                reach.append("never" if not math.isfinite(median) else f"{median:.0f}")
            reach_text = f" {' / '.join(reach)} |"
        walls = [s["wall_seconds"] for s in runs if s["wall_seconds"]]
        wall = f"{np.median(walls) / 60:.0f} min" if walls else "n/a"
        per_seed = ", ".join(f"{fmt(v)} (s{Path(s['run']).name.removeprefix('seed')})" for v, s in zip(values, runs))
        lines.append(f"| {name} | {len(runs)} | {fmt(iqm(values))} | [{fmt(low)}, {fmt(high)}] | {per_seed} | "
                     f"{random_text} |{reach_text} {wall} |")
    plot = doc.with_suffix(".png")
    if _plot(grid, plot, unit):
        lines += ["", f"![learning curves]({plot.name})", "",
                  f"Curves: IQM over seeds of the {unit} at each evaluation against training steps after "
                  "warm-up; bands: 95% bootstrap intervals."]
    text = "\n".join(lines) + "\n"
    doc.write_text(text)
    return text


def _plot(grid: dict[str, list[dict]], path: Path, unit: str) -> bool:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for index, (name, runs) in enumerate(grid.items()):
        steps, centre, low, high = curve(runs)
        ax.plot(steps, centre, color=f"C{index}", label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(steps, low, high, color=f"C{index}", alpha=0.2, linewidth=0)
    ax.set(xlabel="training steps per agent after warm-up", ylabel=f"team evaluation return ({unit})")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=110)
    return True


@click.command()
@click.option("--setting", "settings", multiple=True, metavar="NAME=CONFIG[;KEY=VALUE...]",
              help="A setting: its name, its TOML config and extra overrides separated by ';'. Repeatable.")
@click.option("--seeds", default="0-4", show_default=True, help="Seeds, e.g. 0-4 or 0,1,2.")
@click.option("--ranks", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Overrides for every setting.")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True, help="Jobs at once.")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/learning"), show_default=True)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/learning"), show_default=True)
@click.option("--doc", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/learning.md"), show_default=True)
@click.option("--title", default="Learning over seeds", show_default=True)
@click.option("--notes", default="", help="Markdown written under the title (machine, commands, what changed).")
@click.option("--report-only", is_flag=True, help="Only rebuild the report from the results folder.")
def main(settings, seeds, ranks, overrides, parallel, runs, results, doc, title, notes, report_only) -> None:
    """Run every setting for every seed (skipping finished ones), then write the report."""
    results.mkdir(parents=True, exist_ok=True)
    if not report_only:
        parsed = []
        for item in settings:
            name, _, rest = item.partition("=")
            config, *extra = rest.split(";")
            parsed.append((name, config, [*overrides, *extra]))
        (results / "order.json").write_text(json.dumps([n for n, _, _ in parsed]))
        runs.mkdir(parents=True, exist_ok=True)
        jobs = [(name, config, seed, extra) for seed in parse_seeds(seeds) for name, config, extra in parsed]

        def one(job):
            name, config, seed, extra = job
            log = runs / f"{slug(name)}-seed{seed}.log"
            run_dir = run_one(name, config, seed, ranks, runs, extra, log)
            out = results / slug(name) / f"seed{seed}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(seed_summary(run_dir), indent=1) + "\n")
            print(f"{name} seed {seed}: final {metric(json.loads(out.read_text())):.4g}", flush=True)

        with ThreadPoolExecutor(parallel) as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()
    print(write_report(results, doc, title, notes))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
