"""Reports on runs of `python -m odmar_mpi.run`, one module per job:

- `runs`: reading a run folder's per-rank records (`load_run`, `Run`, `ReportError`);
- `summary`: one run at a glance (`summarise`, `format_table`) and the end-of-run report (`final_report`);
- `compare`: settings over seeds (IQM, 95% bootstrap intervals, steps to shares of the optimum, curves);
- `plots`: a run's learning curve with its world's scale, runs grouped by setting, a comparison;
- `animation`: one evaluation episode of the trained team as a GIF, for every algorithm;
- `export`: every table of every rank as CSV;
- `cli`: `python -m odmar_mpi.report RUN_DIR ... [--json] [--compare] [--plot F] [--gif F] [--csv DIR]`.

Plots and the animation import matplotlib, Pillow and torch only when used.
"""

from odmar_mpi.report.compare import bootstrap_ci, compare_settings, iqm, settings_from_folders
from odmar_mpi.report.runs import ReportError, Run, load_run, run_label
from odmar_mpi.report.summary import final_report, format_table, summarise

__all__ = ["ReportError", "Run", "bootstrap_ci", "compare_settings", "final_report", "format_table", "iqm",
           "load_run", "run_label", "settings_from_folders", "summarise"]
