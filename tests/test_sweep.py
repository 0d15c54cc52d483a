"""`python -m odmar_mpi.sweep`: the grid as data, skipping complete runs, continuing interrupted ones, the Slurm job
array it submits (against a stand-in sbatch; tests/test_slurm.py runs it on a real Slurm), and a real local sweep
of one tiny setting x 2 seeds (2 ranks each) that `report --compare` then summarises. The local sweep starts its
own MPI jobs (so it runs in the serial pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from odmar_mpi.report.compare import bootstrap_ci, iqm
from odmar_mpi.report.summary import summarise
from odmar_mpi.sweep import (ROOT, SWEEP_SCRIPT, Setting, Sweep, SweepError, array_spec, cli, load_sweep, parse_seeds,
                             parse_setting, plan, run_state, slug, write_sweep)
from test_run_e2e import TINY  # warm-up 200 + 300 steps of ODMAR on 2 ranks: seconds

QUICK = str(ROOT / "configs" / "quick.toml")
SAC = str(ROOT / "configs" / "sac.toml")


def sweep_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odmar_mpi.sweep", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


# ---------------------------------------------------------------------- the grid as data


def test_seeds_and_settings_parse_and_bad_ones_say_how_to_write_them(tmp_path):
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    with pytest.raises(SweepError, match="give seeds as 0-4"):
        parse_seeds("a-b")
    setting = parse_setting(f"fast, beta 0={QUICK};model.beta=0;sac.hidden=[32, 32]", ["run.train_steps=10"])
    assert setting == Setting("fast, beta 0", QUICK, ("run.train_steps=10", "model.beta=0", "sac.hidden=[32, 32]"))
    assert slug(setting.name) == "fast__beta_0"
    with pytest.raises(SweepError, match="write NAME=CONFIG"):
        parse_setting("no config")
    with pytest.raises(SweepError, match="does not exist"):
        parse_setting(f"x={tmp_path / 'missing.toml'}")
    with pytest.raises(SweepError, match="not section.key=value"):
        parse_setting(f"x={QUICK};model.beta")


def test_a_sweep_is_its_list_of_setting_seed_pairs_seed_by_seed(tmp_path):
    a, b = Setting("a", QUICK), Setting("b", SAC, ("run.seed=9",))
    sweep = plan([a, b], [0, 1], ranks=2)
    assert sweep.runs == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    write_sweep(tmp_path, sweep)
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["runs"][1] == {"setting": "b", "seed": 0, "folder": "b/seed0"} and data["ranks"] == 2
    assert load_sweep(tmp_path) == sweep
    # Continuing with another seed and another setting adds their runs after the existing ones.
    more = sweep.merged(plan([a, Setting("c", SAC)], [1, 2], ranks=2))
    assert more.names() == ["a", "b", "c"]
    assert more.runs == [*sweep.runs, ("c", 1), ("a", 2), ("c", 2)]
    with pytest.raises(SweepError, match="setting 'a' was .* and is now .*give the new one another name"):
        sweep.merged(plan([Setting("a", SAC)], [0], ranks=2))
    with pytest.raises(SweepError, match="mix rank counts"):
        sweep.merged(plan([a], [0], ranks=3))
    with pytest.raises(SweepError, match="share folders"):
        plan([Setting("a b", QUICK), Setting("a_b", QUICK)], [0], ranks=2)


def test_run_state_tells_complete_resumable_new_and_stale_folders(tmp_path):
    def folder(name: str, *files: str) -> Path:
        path = tmp_path / name
        for file in files:
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_text("{\"ranks\": 2}" if file == "run.json" else "x")
        return path

    assert run_state(tmp_path / "absent") == "new"
    assert run_state(folder("log-only", "wall_seconds")) == "new"
    assert run_state(folder("complete", "COMPLETE")) == "complete"
    both = ["config.toml", "run.json", "checkpoints/rank0000_step0100.h5", "checkpoints/rank0001_step0100.h5"]
    assert run_state(folder("resume", *both)) == "resume"
    assert run_state(folder("one-rank", *both[:3])) == "stale"  # rank 1 never checkpointed: nothing to resume
    assert run_state(folder("started", "config.toml", "run.json", "records/x")) == "stale"


def test_array_spec_lists_runs_of_tasks_as_ranges():
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and array_spec([3]) == "3"


# ---------------------------------------------------------------------- --slurm against a stand-in sbatch


def test_slurm_submits_the_runs_not_complete_as_one_array_with_the_options_given(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$PWD\" \"$@\" > {calls}\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "sweep"
    (out / "a" / "seed1").mkdir(parents=True)
    (out / "a" / "seed1" / "COMPLETE").write_text("500\n")  # finished earlier: not submitted again
    with pytest.raises(SystemExit) as done:
        cli(["--setting", f"a={QUICK};sac.hidden=[32, 32]", "--seeds", "0-2", "--ranks", "2", "--out", str(out),
             "--slurm", "--time=00:10:00", "--partition=debug"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "submitted job array 4242: 2 of 3 runs" in printed and "squeue -j 4242" in printed
    assert f"python -m odmar_mpi.report {out} --compare" in printed
    cwd, *args = calls.read_text().splitlines()
    assert cwd == str(ROOT)  # launch/slurm_job.sh runs from the submit folder: the project root
    assert args == ["--parsable", "--array=0,2", "--ntasks=2", "--time=00:10:00", "--partition=debug",
                    str(SWEEP_SCRIPT), str(out.resolve())]
    # Task i: the run folder, the config, then odmar_mpi.run's options, one a line (a value may hold spaces).
    task = (out / "slurm_tasks" / "2").read_text().splitlines()
    assert task == [str(out.resolve() / "a" / "seed2"), QUICK, "--set", "sac.hidden=[32, 32]", "--set", "run.seed=2"]
    assert load_sweep(out).runs == [("a", 0), ("a", 1), ("a", 2)]


# ---------------------------------------------------------------------- a real local sweep


def tiny_sweep_args(out: Path) -> list[str]:
    return ["--setting", f"tiny={QUICK};" + ";".join(TINY), "--seeds", "0-1", "--ranks", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    result = sweep_command(*tiny_sweep_args(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_a_local_sweep_runs_every_seed_and_ends_with_the_comparison(local_sweep):
    out, result = local_sweep
    for seed in (0, 1):
        run_dir = out / "tiny" / f"seed{seed}"
        assert (run_dir / "COMPLETE").read_text().strip() == "500"
        assert summarise(run_dir)["seed"] == seed
        log = (out / "tiny" / f"seed{seed}.log").read_text()
        assert f"--out {run_dir}" in log and f"--set run.seed={seed}" in log
    heading = "tiny (odmar beta=0.01, 2 agents, reward-collection): final share of the optimum over 2 seed(s)"
    assert heading in result.stdout
    assert "starting" in result.stderr and "complete after" in result.stderr


def test_a_second_call_starts_no_run_and_compare_gives_the_iqm_and_interval(local_sweep):
    out, _ = local_sweep
    marks = [out / "tiny" / f"seed{seed}" / "COMPLETE" for seed in (0, 1)]
    logs = [out / "tiny" / f"seed{seed}.log" for seed in (0, 1)]
    before = [(mark.stat().st_mtime_ns, log.read_text()) for mark, log in zip(marks, logs)]
    again = sweep_command(*tiny_sweep_args(out))  # the same command again
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(mark.stat().st_mtime_ns, log.read_text()) for mark, log in zip(marks, logs)] == before
    assert "2 run(s) were complete already and were skipped." in again.stderr and "starting" not in again.stderr
    compared = subprocess.run([sys.executable, "-m", "odmar_mpi.report", str(out), "--compare", "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr
    [tiny] = json.loads(compared.stdout)["settings"]
    finals = [summarise(out / "tiny" / f"seed{seed}")["final_optimal_share"] for seed in (0, 1)]
    assert tiny["seeds"] == [0, 1] and [p["final"] for p in tiny["per_seed"]] == finals
    assert tiny["iqm"] == pytest.approx(iqm(finals), rel=1e-12)
    assert tiny["ci95"] == pytest.approx(list(bootstrap_ci(finals)), rel=1e-12)
    assert min(finals) <= tiny["ci95"][0] <= tiny["iqm"] <= tiny["ci95"][1] <= max(finals)
    assert all(p["wall_seconds"] > 0 for p in tiny["per_seed"])


def test_an_interrupted_run_is_continued_with_resume(local_sweep):
    out, _ = local_sweep
    run_dir = out / "tiny" / "seed1"
    (run_dir / "COMPLETE").unlink()  # as if stopped after its last checkpoint
    kept = (out / "tiny" / "seed0" / "COMPLETE").stat().st_mtime_ns
    again = sweep_command("--out", str(out))  # continues the sweep of out/sweep.json
    assert again.returncode == 0, again.stdout + again.stderr
    log = (out / "tiny" / "seed1.log").read_text()
    assert f"--resume {run_dir}" in log and f"resuming {run_dir} from step 500" in log
    assert (run_dir / "COMPLETE").read_text().strip() == "500"
    assert (out / "tiny" / "seed0" / "COMPLETE").stat().st_mtime_ns == kept
    assert f"tiny seed 1: continuing {run_dir}" in again.stderr


def test_a_new_sweep_needs_its_ranks_and_a_clash_with_the_saved_one_is_refused(local_sweep, tmp_path):
    out, _ = local_sweep
    refused = sweep_command("--setting", f"tiny={SAC}", "--ranks", "2", "--out", str(out))
    assert refused.returncode == 2 and "setting 'tiny' was" in refused.stderr
    fresh = sweep_command("--setting", f"x={SAC}", "--out", str(tmp_path / "new"))
    assert fresh.returncode == 2 and "--ranks is needed for a new sweep" in fresh.stderr
    nothing = sweep_command("--out", str(tmp_path / "none"))
    assert nothing.returncode == 2 and "no --setting given" in nothing.stderr


def test_sweep_json_round_trips_through_its_writer(tmp_path):
    sweep = Sweep([Setting("a", QUICK, ("x.y=1",))], [("a", 3)], 4)
    write_sweep(tmp_path, sweep)
    assert load_sweep(tmp_path) == sweep and not list(tmp_path.glob(".*.tmp"))
