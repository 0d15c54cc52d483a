"""Learning over seeds: run a grid of settings x seeds, aggregate the way rliable does, write a report.

    python benchmarks/learning.py --setting "odmar beta=0.01=configs/odmar_beta0.01.toml" \\
        --setting "sac=configs/sac.toml" --seeds 0-4 --ranks 5 --set run.train_steps=2400 \\
        --runs runs/learning --results docs/learning --doc docs/learning.md --title "..."

A thin user of the package: the grid is a sweep of `odmar_mpi.sweep` (RUNS/sweep.json; each (setting, seed)
one `mpiexec -n RANKS python -m odmar_mpi.run` job into RUNS/<setting>/seed<S>; a COMPLETE run is not run
again and an interrupted one continues, so a grid can be finished over several sessions; `--parallel K` runs
K jobs at once: mind the cores, each job runs RANKS processes). What this script adds: every finished seed's
summary is kept in RESULTS/<setting>/seed<S>.json (small, meant to be committed), and the markdown report is
built from those files alone (`--report-only` rebuilds it), by the package's comparison
(`odmar_mpi.report.compare`: IQM over seeds of the final figure with a 95% percentile bootstrap interval,
2000 resamples; every seed's own number; median steps to 90/95/98% of the optimum; curves with 95% bands).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from odmar_mpi.report.compare import (SettingRuns, compare_settings, curve_caption, figures_of, final_figure,
                                      markdown_table, summarise_seed)
from odmar_mpi.sweep import (SWEEP_FILE, Outcome, SweepError, load_sweep, parse_seeds, parse_setting, plan, run_local,
                             slug, write_sweep)

LEFT_OUT = ("model_error", "consensus", "timing", "warnings", "best")  # bulky, and not needed for the report


def seed_summary(run_dir: Path) -> dict:
    """What the report needs of one seed (read from its records), as kept in the results folder."""
    summary = summarise_seed(run_dir)
    return {key: value for key, value in summary.items() if key not in LEFT_OUT}


def load_results(results: Path) -> dict[str, list[dict]]:
    """{setting: [seed summaries]} from RESULTS/<setting>/seed*.json, settings in the order given by order.json."""
    order = json.loads((results / "order.json").read_text()) if (results / "order.json").exists() else []
    found = {}
    for folder in sorted(results.iterdir()) if results.exists() else []:
        if folder.is_dir():
            found[folder.name] = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    names = [n for n in order if slug(n) in found] + [n for n in found if n not in map(slug, order)]
    return {name: found[slug(name)] for name in names if found.get(slug(name))}


def write_report(results: Path, doc: Path, title: str, notes: str) -> str:
    """docs markdown with the tables and a plot next to it; returns the text."""
    grid = load_results(results)
    if not grid:
        raise click.ClickException(f"no results in {results}")
    comparison = compare_settings([SettingRuns(name, runs) for name, runs in grid.items()], [str(results)])
    lines = [f"# {title}", "", notes.strip(), "", *markdown_table(comparison)]
    plot = doc.with_suffix(".png")
    try:
        from odmar_mpi.report.plots import plot_comparison

        plot_comparison(comparison, plot)
        lines += ["", f"![learning curves]({plot.name})", "", curve_caption(comparison)]
    except ImportError:  # no matplotlib: the tables alone
        pass
    text = "\n".join(lines) + "\n"
    doc.write_text(text)
    return text


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
    failed: list[Outcome] = []
    if not report_only:
        try:
            sweep = plan([parse_setting(item, overrides) for item in settings], parse_seeds(seeds), ranks)
            if (runs / SWEEP_FILE).is_file():
                sweep = load_sweep(runs).merged(sweep)
        except SweepError as err:
            raise click.UsageError(str(err)) from None
        (results / "order.json").write_text(json.dumps([setting.name for setting in sweep.settings]))
        write_sweep(runs, sweep)

        def keep(outcome: Outcome) -> None:
            out = results / slug(outcome.name) / f"seed{outcome.seed}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            summary = seed_summary(outcome.run_dir)
            out.write_text(json.dumps(summary, indent=1) + "\n")
            figure = figures_of(summary)
            if figure:
                print(f"{outcome.name} seed {outcome.seed}: final {final_figure(summary, figure[0]):.4g} "
                      f"({figure[0]})", flush=True)

        outcomes = run_local(sweep, runs, parallel, on_done=keep)
        failed = [o for o in outcomes if o.status == "failed"]
    print(write_report(results, doc, title, notes))
    if failed:
        raise click.ClickException("failed: " + "; ".join(f"{o.name} seed {o.seed} (exit {o.code}; see {o.log})"
                                                           for o in failed))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
