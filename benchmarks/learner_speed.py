"""Steps per second per agent of this tree against an earlier commit, side by side in one run.

    python benchmarks/learner_speed.py --baseline 9ca3e1b --config configs/mamba_quick.toml \\
        --set run.train_steps=500 --ranks 3 --repeats 2

The baseline is checked out once into a `git worktree` (default /tmp/odmar-baseline-<rev>) and run from there
with this venv's Python; both trees get the same config file (this tree's), the same --set values and the same
rank count (`--set-current` adds settings for this tree alone), and they run alternately, one job at a time
(`--repeats` times each), so both see the same machine. A run's time is measured the same way for both
versions, from its own output: from the line `run folder ...` that rank 0 prints once every rank has built its
node, to the progress line of the last step (`run.progress_every` is set to the run's length, so that line
comes at its last step, before the final checkpoint), so start-up (imports) and the final report are left out
and the random-policy evaluation at the start is in. The per-phase seconds are each version's own records (the
mean over ranks of the last `timing` row, written at each evaluation: give `run.eval_every` a value that
divides `run.train_steps` for them to cover the whole run; the baseline's phases are coarser). Run it alone on
the machine: other jobs on the cores change both figures, not only one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")

READ_TIMING = """
import json, sys
import numpy as np
from odmar_mpi.records import read_records, records_path
rows = [read_records(records_path(sys.argv[1], r))[0]["timing"] for r in range(int(sys.argv[2]))]
print(json.dumps({k: float(np.mean([t[k][-1] for t in rows])) for k in rows[0] if k != "step"}))
"""


def worktree(revision: str, folder: Path | None) -> Path:
    """A checkout of `revision` (made once with git worktree add)."""
    folder = folder or Path(tempfile.gettempdir()) / f"odmar-baseline-{revision}"
    if not (folder / "odmar_mpi").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), revision], check=True,
                       capture_output=True)
    return folder


def timed_run(tree: Path, config: Path, overrides: tuple[str, ...], ranks: int) -> dict:
    """One run in `tree`: seconds from `run folder` to the last progress line, and the records' phase seconds."""
    out = Path(tempfile.mkdtemp(prefix="odmar-speed-")) / "run"
    command = [MPIEXEC, "-n", str(ranks), PYTHON, "-u", "-m", "odmar_mpi.run", "--config", str(config), "--out",
               str(out)]
    for item in overrides:
        command += ["--set", item]
    job = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={"PYTHONPATH": str(tree), "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin"})
    started = last = None
    lines = []
    for line in job.stdout:
        now = time.perf_counter()
        lines.append(line)
        if line.startswith("run folder"):
            started = now
        elif line.startswith("step "):
            last = now
    if job.wait() != 0 or started is None or last is None:
        raise RuntimeError(f"run in {tree} failed:\n{''.join(lines[-30:])}")
    phases = subprocess.run([PYTHON, "-c", READ_TIMING, str(out), str(ranks)], cwd=tree, capture_output=True,
                            text=True, check=True, env={"PYTHONPATH": str(tree)})
    return {"seconds": last - started, "phases": json.loads(phases.stdout)}


@click.command()
@click.option("--baseline", default="9ca3e1b", show_default=True, help="The commit to compare against.")
@click.option("--worktree", "folder", type=click.Path(path_type=Path), default=None,
              help="Where the baseline is checked out (default: a folder in the temp dir).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--set", "overrides", multiple=True, help="Applied to both versions; repeatable.")
@click.option("--set-current", "current_overrides", multiple=True,
              help="Applied to this tree only, after --set (a setting the baseline does not have, such as "
                   "run.precision=bfloat16); repeatable.")
@click.option("--ranks", default=3, show_default=True)
@click.option("--repeats", default=1, show_default=True, help="Runs of each version, alternating (median).")
@click.option("--json", "as_json", is_flag=True)
def main(baseline: str, folder: Path | None, config: Path, overrides: tuple[str, ...],
         current_overrides: tuple[str, ...], ranks: int, repeats: int, as_json: bool) -> None:
    old_tree = worktree(baseline, folder)
    config = config.resolve()
    steps = json.loads(subprocess.run(
        [PYTHON, "-c", "import sys, json; from odmar_mpi.config import load_config; "
                       "c = load_config(sys.argv[1], sys.argv[2:]); print(c.total_steps)", str(config), *overrides],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    timed = (*overrides, f"run.progress_every={steps}")  # the last progress line comes at the last step
    results: dict[str, list[dict]] = {"baseline": [], "current": []}
    for _ in range(repeats):
        results["baseline"].append(timed_run(old_tree, config, timed, ranks))
        results["current"].append(timed_run(ROOT, config, (*timed, *current_overrides), ranks))
    summary = {}
    for name, runs in results.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        summary[name] = {"seconds": seconds, "steps_per_second_per_agent": steps / seconds,
                         "runs_s": [run["seconds"] for run in runs], "phases": runs[-1]["phases"]}
    summary["speedup"] = summary["current"]["steps_per_second_per_agent"] / summary["baseline"]["steps_per_second_per_agent"]
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    summary.update({"config": str(shown), "overrides": list(overrides), "current_overrides": list(current_overrides),
                    "ranks": ranks, "steps_per_agent": steps, "baseline_revision": baseline})
    if as_json:
        print(json.dumps(summary))
        return
    print(f"{summary['config']} {' '.join(overrides)}: {ranks} ranks, {steps} steps per agent"
          + (f"; this tree also {' '.join(current_overrides)}" if current_overrides else ""))
    for name in ("baseline", "current"):
        s = summary[name]
        phases = ", ".join(f"{k} {v:.1f}" for k, v in s["phases"].items() if v >= 0.05)
        print(f"  {name:<8} {s['steps_per_second_per_agent']:7.2f} steps/s per agent ({s['seconds']:.1f} s; runs "
              f"{', '.join(f'{x:.1f}' for x in s['runs_s'])})\n           seconds per phase: {phases}")
    print(f"  current / baseline: {summary['speedup']:.2f}x")


if __name__ == "__main__":
    main()
