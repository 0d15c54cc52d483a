"""`python -m odmar_mpi.sweep`: run a grid of settings x seeds, here or as one Slurm job array, then compare.

    python -m odmar_mpi.sweep --setting "fast=configs/odmar_fast.toml" \\
        --setting "fast, beta 0=configs/odmar_fast.toml;model.beta=0" --seeds 0-4 --ranks 5 --out runs/beta
    python -m odmar_mpi.sweep ... --out runs/beta --slurm --time=02:00:00 --partition=cpu

A sweep is data (BenchMARL's `Benchmark(algorithms, tasks, seeds)`): a list of (setting, seed) pairs, each
setting a name, a TOML config and overrides, written to OUT/sweep.json. Run (setting, seed) lives in
OUT/<setting slug>/seed<S>/, an ordinary run folder of `python -m odmar_mpi.run`. Locally the runs go
`--parallel` at a time (each `mpiexec -n RANKS`, output to OUT/<slug>/seed<S>.log); a run whose folder is
COMPLETE is skipped and an interrupted one continues with --resume, so calling the same command again
finishes a sweep (or `python -m odmar_mpi.sweep --out OUT` alone, which reads OUT/sweep.json); new settings or
seeds given later are added to the sweep. The sweep ends by printing the comparison
(`python -m odmar_mpi.report OUT --compare`). With `--slurm` it submits the runs that are not complete as
one job array of launch/sweep.sbatch (array task i = pair i of sweep.json; every sbatch option after
--slurm passes through), each task requeued and resumed as a single run (launch/slurm_job.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from odmar_mpi.run import COMPLETE_MARK, RUN_FILE

SWEEP_FILE = "sweep.json"
TASKS_FOLDER = "slurm_tasks"  # one file per array task: run folder, config, odmar_mpi.run options, a line each
STALE = ".stale-"  # suffix of a stale run folder moved aside, then a number
WALL_FILE = "wall_seconds"  # seconds the sweep spent running a run folder, over all its calls
ROOT = Path(__file__).resolve().parents[1]
SWEEP_SCRIPT = ROOT / "launch" / "sweep.sbatch"
EXIT_USAGE = 2


class SweepError(ValueError):
    """A sweep cannot be planned or continued; the message names the setting, seed or file and the fix."""


def slug(name: str) -> str:
    """A setting's folder name: its name with every character but letters, digits and ._- as '_'."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def parse_seeds(text: str) -> list[int]:
    """'0-4', '0,2,5' or '0-2,7' -> the seeds, in order, without repeats."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds += range(int(low), int(high or low) + 1)
    except ValueError:
        raise SweepError(f"--seeds {text!r}: give seeds as 0-4, 0,2,5 or 0-2,7") from None
    if not seeds:
        raise SweepError(f"--seeds {text!r} names no seed; e.g. --seeds 0-4")
    return list(dict.fromkeys(seeds))


@dataclass(frozen=True)
class Setting:
    """One setting: its name, its TOML config (an absolute path) and `--set` overrides, applied in order."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


def parse_setting(text: str, overrides: tuple[str, ...] | list[str] = ()) -> Setting:
    """'NAME=CONFIG[;section.key=value...]' -> a Setting; `overrides` (for every setting) come first, so the
    setting's own win."""
    name, equals, rest = text.partition("=")
    config, *own = rest.split(";")
    if not equals or not name.strip() or not config.strip():
        raise SweepError(f"--setting {text!r}: write NAME=CONFIG[;section.key=value...], e.g. "
                         "--setting \"fast=configs/odmar_fast.toml;model.beta=0\"")
    path = Path(config.strip())
    if not path.is_file():
        raise SweepError(f"--setting {text!r}: config {path} does not exist (paths are relative to {Path.cwd()}).")
    bad = [item for item in [*overrides, *own] if "=" not in item]
    if bad:
        raise SweepError(f"--setting {text!r}: override {bad[0]!r} is not section.key=value.")
    items = tuple(item.strip() for item in [*overrides, *own] if item.strip())
    return Setting(name.strip(), str(path.resolve()), items)


@dataclass
class Sweep:
    """The grid: its settings, the (setting name, seed) pairs to run in this order, and the ranks per run."""

    settings: list[Setting]
    runs: list[tuple[str, int]]
    ranks: int

    def names(self) -> list[str]:
        return [setting.name for setting in self.settings]

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)

    @staticmethod
    def run_dir(folder: Path, name: str, seed: int) -> Path:
        """The run folder of (setting `name`, `seed`) in the sweep folder `folder`."""
        return Path(folder) / slug(name) / f"seed{seed}"

    def to_json(self) -> dict[str, Any]:
        return {"ranks": self.ranks,
                "settings": [{"name": s.name, "slug": slug(s.name), "config": s.config, "overrides": list(s.overrides)}
                             for s in self.settings],
                "runs": [{"setting": name, "seed": seed, "folder": f"{slug(name)}/seed{seed}"}
                         for name, seed in self.runs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sweep:
        settings = [Setting(s["name"], s["config"], tuple(s["overrides"])) for s in data["settings"]]
        return cls(settings, [(r["setting"], int(r["seed"])) for r in data["runs"]], int(data["ranks"]))

    def merged(self, new: Sweep) -> Sweep:
        """This sweep with the settings and runs of `new` added; SweepError where they disagree."""
        if new.ranks != self.ranks:
            raise SweepError(f"the sweep runs {self.ranks} ranks per run; --ranks {new.ranks} would mix rank counts "
                             f"(one rank per agent): use --ranks {self.ranks}, or another --out.")
        settings = list(self.settings)
        for setting in new.settings:
            same = [s for s in settings if s.name == setting.name]
            if same and same[0] != setting:
                raise SweepError(f"setting {setting.name!r} was {_describe(same[0])} in this sweep and is now "
                                 f"{_describe(setting)}; its runs would mix the two: give the new one another name, "
                                 "or use another --out.")
            clash = [s for s in settings if s.name != setting.name and slug(s.name) == slug(setting.name)]
            if clash:
                raise SweepError(f"settings {clash[0].name!r} and {setting.name!r} share the folder "
                                 f"{slug(setting.name)}; rename one.")
            if not same:
                settings.append(setting)
        runs = list(dict.fromkeys([*self.runs, *new.runs]))
        return Sweep(settings, runs, self.ranks)


def _describe(setting: Setting) -> str:
    return f"{setting.config} with {'; '.join(setting.overrides) or 'no overrides'}"


def plan(settings: list[Setting], seeds: list[int], ranks: int) -> Sweep:
    """Every setting for every seed, seed by seed (the first seeds of every setting finish first)."""
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise SweepError(f"two settings are named {next(n for n in names if names.count(n) > 1)!r}; names must differ.")
    slugs = [slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise SweepError(f"settings {names} would share folders ({slugs}); rename one.")
    return Sweep(list(settings), [(s.name, seed) for seed in seeds for s in settings], ranks)


def load_sweep(folder: Path) -> Sweep:
    """The sweep of `folder` (its sweep.json)."""
    path = Path(folder) / SWEEP_FILE
    try:
        return Sweep.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SweepError(f"{path} cannot be read as a sweep ({type(err).__name__}: {err}).") from None


def write_sweep(folder: Path, sweep: Sweep) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{SWEEP_FILE}.tmp"
    temp.write_text(json.dumps(sweep.to_json(), indent=1) + "\n")
    temp.replace(folder / SWEEP_FILE)


# ---------------------------------------------------------------------- one run


def run_state(run_dir: Path) -> str:
    """"complete" (its COMPLETE mark), "resume" (a checkpoint step every rank has), "new" (nothing of a run yet)
    or "stale" (a run that stopped before every rank checkpointed: it can neither resume nor start afresh there)."""
    from odmar_mpi.checkpoint import local_steps, newest_common_step

    run_dir = Path(run_dir)
    if (run_dir / COMPLETE_MARK).exists():
        return "complete"
    started = any((run_dir / part).exists() for part in ("config.toml", "checkpoints", "records"))
    if not started:
        return "new"
    try:
        ranks = int(json.loads((run_dir / RUN_FILE).read_text())["ranks"])
    except (OSError, ValueError, KeyError):
        return "stale"
    common = newest_common_step(local_steps(run_dir, rank) for rank in range(ranks))
    return "resume" if common is not None and (run_dir / "config.toml").is_file() else "stale"


def run_arguments(sweep: Sweep, folder: Path, name: str, seed: int, resume: bool) -> list[str]:
    """The options of `python -m odmar_mpi.run` for (setting, seed): a new run into its folder, or --resume."""
    setting, run_dir = sweep.setting(name), sweep.run_dir(folder, name, seed)
    sets = [word for item in [*setting.overrides, f"run.seed={seed}"] for word in ("--set", item)]
    start = ["--resume", str(run_dir)] if resume else ["--config", setting.config, "--out", str(run_dir)]
    return [*start, *sets]


@dataclass
class Outcome:
    name: str
    seed: int
    run_dir: Path
    status: str
    """"skipped" (complete before), "done", "failed"."""
    code: int = 0
    seconds: float = 0.0
    log: Path | None = None


def run_one(sweep: Sweep, folder: Path, name: str, seed: int, mpiexec: str,
            say: Callable[[str], None] = print) -> Outcome:
    """Run (setting, seed) to completion here, or skip it when complete; the output goes to its log file."""
    run_dir = sweep.run_dir(folder, name, seed)
    state = run_state(run_dir)
    if state == "complete":
        return Outcome(name, seed, run_dir, "skipped")
    if state == "stale":
        aside = _aside(run_dir)
        run_dir.rename(aside)
        say(f"{name} seed {seed}: {run_dir} stopped before every rank checkpointed; moved it to {aside} and start "
            "again")
    log = run_dir.parent / f"seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [mpiexec, "-n", str(sweep.ranks), sys.executable, "-m", "odmar_mpi.run",
               *run_arguments(sweep, folder, name, seed, resume=state == "resume")]
    say(f"{name} seed {seed}: {'continuing' if state == 'resume' else 'starting'} {run_dir} (log {log})")
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if run_dir.is_dir():
        wall = run_dir / WALL_FILE
        before = float(wall.read_text()) if wall.is_file() else 0.0
        wall.write_text(f"{before + seconds:.0f}\n")
    status = "done" if done.returncode == 0 and (run_dir / COMPLETE_MARK).exists() else "failed"
    return Outcome(name, seed, run_dir, status, done.returncode, seconds, log)


def _aside(run_dir: Path) -> Path:
    k = 1
    while (candidate := run_dir.with_name(f"{run_dir.name}{STALE}{k}")).exists():
        k += 1
    return candidate


def set_aside(run_dir: Path) -> bool:
    """Whether `run_dir` is a stale run folder a sweep moved out of the way (seed<S>.stale-<k>)."""
    return STALE in Path(run_dir).name


def run_local(sweep: Sweep, folder: Path, parallel: int = 1, mpiexec: str | None = None,
              on_done: Callable[[Outcome], None] | None = None, say: Callable[[str], None] = print) -> list[Outcome]:
    """Every run of the sweep here, `parallel` at a time (each `mpiexec -n ranks`); `on_done` is called for every
    run that is complete afterwards (skipped or done), in the order they end. Returns the outcomes in plan order."""
    mpiexec = mpiexec or str(Path(sys.executable).parent / "mpiexec")
    lock = threading.Lock()

    def one(pair: tuple[str, int]) -> Outcome:
        outcome = run_one(sweep, folder, *pair, mpiexec, say=lambda text: _locked(lock, say, text))
        with lock:
            if outcome.status == "failed":
                say(f"{outcome.name} seed {outcome.seed}: FAILED (exit {outcome.code}); see {outcome.log}")
            elif outcome.status == "done":
                say(f"{outcome.name} seed {outcome.seed}: complete after {outcome.seconds:.0f} s")
            if outcome.status != "failed" and on_done is not None:
                on_done(outcome)
        return outcome

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, sweep.runs))


def _locked(lock: threading.Lock, say: Callable[[str], None], text: str) -> None:
    with lock:
        say(text)


# ---------------------------------------------------------------------- Slurm


def array_spec(indices: list[int]) -> str:
    """Slurm's --array value for `indices`, with runs of consecutive ones as ranges: [0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def write_array_tasks(sweep: Sweep, folder: Path) -> Path:
    """One file per array task (FOLDER/slurm_tasks/<i>): the run folder, the config and the odmar_mpi.run options
    after them, one per line, as launch/sweep.sbatch reads them (values may hold spaces)."""
    tasks = Path(folder) / TASKS_FOLDER
    tasks.mkdir(parents=True, exist_ok=True)
    for index, (name, seed) in enumerate(sweep.runs):
        sets = run_arguments(sweep, folder, name, seed, resume=True)[2:]
        lines = [str(sweep.run_dir(folder, name, seed)), sweep.setting(name).config, *sets]
        if any("\n" in line for line in lines):
            raise SweepError(f"setting {name!r}: a value holds a line break, which an array task cannot pass on.")
        (tasks / str(index)).write_text("\n".join(lines) + "\n")
    return tasks


def submit_slurm(sweep: Sweep, folder: Path, sbatch_args: list[str],
                 sbatch: str = "sbatch") -> tuple[str | None, list[int]]:
    """Submit the runs that are not complete as one job array of launch/sweep.sbatch; returns (job id, array
    indices), (None, []) when every run is complete."""
    folder = Path(folder).resolve()
    pending = [i for i, (name, seed) in enumerate(sweep.runs)
               if run_state(sweep.run_dir(folder, name, seed)) != "complete"]
    if not pending:
        return None, []
    for i in pending:  # a stale folder cannot be resumed and blocks a new run: keep it, out of the way
        name, seed = sweep.runs[i]
        run_dir = sweep.run_dir(folder, name, seed)
        if run_state(run_dir) == "stale":
            run_dir.rename(_aside(run_dir))
    write_array_tasks(sweep, folder)
    if shutil.which(sbatch) is None:
        raise SweepError(f"--slurm: {sbatch} is not on PATH; submit from a Slurm login node (or run here without "
                         "--slurm).")
    command = [sbatch, "--parsable", f"--array={array_spec(pending)}", f"--ntasks={sweep.ranks}", *sbatch_args,
               str(SWEEP_SCRIPT), str(folder)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SweepError(f"{' '.join(command)} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip().split(";")[0], pending


# ---------------------------------------------------------------------- the command


def compare_text(folder: Path) -> str:
    """The comparison `python -m odmar_mpi.report FOLDER --compare` prints."""
    from odmar_mpi.report.compare import compare_settings, format_comparison, settings_from_folders

    return format_comparison(compare_settings(settings_from_folders([folder]), [str(folder)]))


def fail(message: str) -> NoReturn:
    click.echo(f"odmar_mpi.sweep: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


EPILOG = """\b
Examples:
  python -m odmar_mpi.sweep --setting "quick=configs/quick.toml" --seeds 0-4 --ranks 4 --out runs/quick
  python -m odmar_mpi.sweep --setting "sac=configs/sac.toml;run.train_steps=2400" \\
      --setting "odmar=configs/odmar_beta0.01.toml;run.train_steps=2400" --seeds 0-2 --ranks 5 \\
      --parallel 2 --out runs/sac-vs-odmar
  python -m odmar_mpi.sweep --out runs/quick            (continue the sweep in runs/quick)
  python -m odmar_mpi.sweep ... --out runs/quick --slurm --time=01:00:00 --partition=cpu
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--setting", "settings", multiple=True, metavar="NAME=CONFIG[;KEY=VALUE...]",
              help="A setting: its name, its TOML config and overrides separated by ';'. Repeatable.")
@click.option("--seeds", default="0-4", show_default=True, help="Seeds of every setting: 0-4, 0,2,5 or 0-2,7.")
@click.option("--ranks", type=click.IntRange(min=1), default=None,
              help="MPI ranks (= agents) per run. Required for a new sweep.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The sweep folder: OUT/sweep.json and OUT/<setting>/seed<S>/ run folders.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="An override for every setting (a setting's own come after it). Repeatable.")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once here (each runs RANKS processes: mind the cores).")
@click.option("--slurm", is_flag=True,
              help="Submit the runs that are not complete as one Slurm job array instead; every option after "
                   "--slurm goes to sbatch (e.g. --slurm --time=02:00:00 --partition=cpu).")
def main(settings: tuple[str, ...], seeds: str, ranks: int | None, out: Path, overrides: tuple[str, ...],
         parallel: int, slurm: bool) -> None:
    """Run every setting for every seed (skipping complete runs, resuming interrupted ones), then print the
    comparison over seeds; or submit the sweep as one Slurm job array (--slurm)."""
    sbatch_args = list((click.get_current_context().obj or {}).get("sbatch_args", []))
    try:
        sweep = _sweep_to_run(out, settings, seeds, ranks, overrides)
    except SweepError as err:
        fail(str(err))
    write_sweep(out, sweep)
    if slurm:
        try:
            job, tasks = submit_slurm(sweep, out, sbatch_args)
        except SweepError as err:
            fail(str(err))
        if job is None:
            click.echo(f"every run of {out} is complete; nothing to submit.\n\n{compare_text(out)}")
            return
        click.echo(f"submitted job array {job}: {len(tasks)} of {len(sweep.runs)} runs of {out} (array tasks "
                   f"{array_spec(tasks)}), {sweep.ranks} ranks each; logs in {ROOT} (by default "
                   f"slurm-odmar-sweep-{job}_<task>.out).\nWatch it: squeue -j {job}\n"
                   f"When it has finished: python -m odmar_mpi.report {out} --compare")
        return
    click.echo(f"sweep {out}: {len(sweep.settings)} setting(s), {len(sweep.runs)} runs of {sweep.ranks} ranks, "
               f"{parallel} at a time", err=True)
    outcomes = run_local(sweep, out, parallel, say=lambda text: click.echo(text, err=True))
    skipped = sum(o.status == "skipped" for o in outcomes)
    if skipped:
        click.echo(f"{skipped} run(s) were complete already and were skipped.", err=True)
    click.echo(compare_text(out))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        click.echo("failed: " + "; ".join(f"{o.name} seed {o.seed} (exit {o.code}, log {o.log})" for o in failed)
                   + ". Fix the cause and run the same command again to continue.", err=True)
        sys.exit(1)


def _sweep_to_run(out: Path, settings: tuple[str, ...], seeds: str, ranks: int | None,
                  overrides: tuple[str, ...]) -> Sweep:
    """The sweep of this call: OUT/sweep.json's, with the settings and seeds given added."""
    existing = load_sweep(out) if (Path(out) / SWEEP_FILE).is_file() else None
    if not settings:
        if overrides:
            raise SweepError("--set changes the settings given with --setting; a setting of a saved sweep keeps its "
                             "overrides (name a new setting to run others).")
        if existing is None:
            raise SweepError(f"no --setting given and {Path(out) / SWEEP_FILE} does not exist: name at least one "
                             "setting, e.g. --setting \"quick=configs/quick.toml\".")
        if ranks is not None and ranks != existing.ranks:
            raise SweepError(f"{out} runs {existing.ranks} ranks per run, not {ranks}.")
        return existing
    if ranks is None and existing is None:
        raise SweepError("--ranks is needed for a new sweep: MPI ranks (= agents) per run.")
    new = plan([parse_setting(item, overrides) for item in settings], parse_seeds(seeds),
               ranks if ranks is not None else existing.ranks)
    return existing.merged(new) if existing is not None else new


def cli(argv: list[str] | None = None) -> None:
    """The entry point: everything after --slurm goes to sbatch."""
    args = list(sys.argv[1:] if argv is None else argv)
    sbatch_args: list[str] = []
    if "--slurm" in args:
        at = args.index("--slurm")
        args, sbatch_args = args[:at + 1], args[at + 1:]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main.main(args=args, obj={"sbatch_args": sbatch_args}, prog_name="python -m odmar_mpi.sweep")


if __name__ == "__main__":
    cli()
