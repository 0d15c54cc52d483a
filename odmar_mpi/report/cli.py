"""`python -m odmar_mpi.report`: the command line over the package's jobs (summary, comparison, plots, GIF, CSV)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from odmar_mpi.checkpoint import CheckpointError
from odmar_mpi.report.compare import SettingRuns, compare_settings, format_comparison, settings_from_folders
from odmar_mpi.report.runs import ReportError, load_run
from odmar_mpi.report.summary import format_table, summarise

EXIT_USAGE = 2

EPILOG = """\b
Examples:
  python -m odmar_mpi.report runs/20261124-101500
  python -m odmar_mpi.report runs/20261124-101500 --json
  python -m odmar_mpi.report runs/odmar-seed* runs/sac-seed* --plot compare.png
  python -m odmar_mpi.report runs/sweep --compare --plot sweep.png     (a folder of python -m odmar_mpi.sweep)
  python -m odmar_mpi.report runs/sweep --compare --json
  python -m odmar_mpi.report runs/20261124-101500 --gif team.gif
  python -m odmar_mpi.report runs/20261124-101500 --csv runs/20261124-101500/csv
"""


def fail(message: str) -> NoReturn:
    click.echo(f"odmar_mpi.report: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (one object; a list of them for several runs; with --compare the "
                   "comparison).")
@click.option("--compare", is_flag=True,
              help="Compare settings over seeds: each RUN_DIR a sweep folder (DIR/<setting>/seed<S>/, e.g. of "
                   "python -m odmar_mpi.sweep) or run folders (grouped by setting); per setting the IQM over seeds "
                   "of the final figure with its 95% bootstrap interval, every seed's value, steps to 90/95/98% of "
                   "the optimum.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write learning curves to this image file (e.g. curves.png): one run with both ends of its "
                   "world's scale; several grouped by setting (IQM, 95% bootstrap band); with --compare the "
                   "settings' curves.")
@click.option("--gif", type=click.Path(dir_okay=False, path_type=Path),
              help="Animate one run's trained team in one evaluation episode (newest common checkpoint) to this GIF.")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write every table of every rank of one run as CSV into this folder (DIR/rank0000/eval.csv, ...).")
def main(run_dirs: tuple[Path, ...], as_json: bool, compare: bool, plot: Path | None, gif: Path | None,
         csv_dir: Path | None) -> None:
    """Summarise runs of python -m odmar_mpi.run from their per-rank records: team evaluation return against
    the world's optimum, random actions and its reference policy, model error, consensus residual, time per
    phase; or compare settings over seeds (--compare)."""
    if compare and (gif is not None or csv_dir is not None):
        fail("--compare works on folders of runs; --gif and --csv take a single run folder.")
    for option, value in (("--gif", gif), ("--csv", csv_dir)):
        if value is not None and len(run_dirs) != 1:
            fail(f"{option} takes a single RUN_DIR (got {len(run_dirs)}).")
    if compare:
        compare_folders(list(run_dirs), as_json, plot)
        return
    try:
        runs = [load_run(run_dir) for run_dir in run_dirs]
    except ReportError as err:
        fail(str(err))
    summaries = [summarise(run) for run in runs]
    if as_json:
        click.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    else:
        tables = [format_table(summary) for summary in summaries]
        if len(summaries) > 1:
            by_label: dict[str, SettingRuns] = {}
            for summary in summaries:
                by_label.setdefault(summary["label"], SettingRuns(summary["label"], [])).summaries.append(summary)
            tables.append(format_comparison(compare_settings(list(by_label.values()))))
        click.echo("\n\n".join(tables))
    # Notes go to stderr so that --json output stays parseable.
    if plot is not None:
        try:
            from odmar_mpi.report.plots import plot_learning_curves, plot_run

            plot_run(runs[0], plot) if len(runs) == 1 else plot_learning_curves(runs, plot)
        except ImportError:
            fail("--plot needs matplotlib: pip install .[plot]")
        click.echo(f"learning curves: {plot}", err=True)
    if csv_dir is not None:
        from odmar_mpi.report.export import export_csv

        written = export_csv(runs[0].path, csv_dir)
        click.echo(f"csv: {len(written)} files in {csv_dir} (one folder per rank, one file per table)", err=True)
    if gif is not None:
        try:
            from odmar_mpi.report.animation import write_gif

            animation = write_gif(runs[0], gif)
        except ImportError as err:
            fail(f"--gif needs the package {err.name!r} (Pillow comes with .[plot]; a coupled world's own package, "
                 f"e.g. mpe2 with .[mpe]).")
        except (ReportError, CheckpointError) as err:
            fail(str(err))
        click.echo(f"animation: {gif}, {animation.frames} frames, team return {animation.team_return:.3f} "
                   f"with the learners of step {animation.step}", err=True)


def compare_folders(folders: list[Path], as_json: bool, plot: Path | None) -> None:
    """`--compare`: the comparison of the settings in `folders` as text or JSON, and its plot."""
    try:
        comparison = compare_settings(settings_from_folders(folders), [str(f) for f in folders])
    except ReportError as err:
        fail(str(err))
    if not comparison["settings"]:
        fail(f"no settings found in {', '.join(map(str, folders))}.")
    click.echo(json.dumps(comparison, indent=2) if as_json else format_comparison(comparison))
    if plot is not None:
        try:
            from odmar_mpi.report.plots import plot_comparison

            plot_comparison(comparison, plot)
        except ImportError:
            fail("--plot needs matplotlib: pip install .[plot]")
        click.echo(f"learning curves: {plot}", err=True)
