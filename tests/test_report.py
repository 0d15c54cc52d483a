"""`python -m odmar_mpi.report` on fake run folders whose records hold known numbers (no MPI): the summary, the
comparison over seeds, the plots and the CSV export."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from env.optimum import optimal_team_return
from odmar_mpi.config import Config, to_toml
from odmar_mpi.learners import learner_class
from odmar_mpi.records import Records, read_records, records_path
from odmar_mpi.report.cli import main
from odmar_mpi.report.compare import (BOOTSTRAP, SettingRuns, bootstrap_ci, compare_setting, figures_of, iqm,
                                      settings_from_folders)
from odmar_mpi.report.plots import plot_learning_curves, plot_run
from odmar_mpi.report.runs import load_run, run_label
from odmar_mpi.report.summary import eval_rows_to_show, evaluation_policy, final_report, format_table, summarise
from odmar_mpi.sweep import Setting, Sweep, write_sweep
from odmar_mpi.telemetry import NODE_TABLES, PHASES

AGENTS = 3
EVAL_STEPS = [100, 200, 300]
TEAM = [-4.5, 12.25, 9.0]  # best is not the last, so "best" and "final" differ
LAST_EPISODE_STEP = 350  # after the last evaluation: the run's step count comes from every table
# Dyadic numbers throughout, so the means over ranks below are exact in floating point.
HOLDOUT = [0.5, 0.25, 0.125]  # rank r records HOLDOUT[k] + 0.125 r; rank 2's first is NaN (no held-out data yet)
EVAL_RMSE = [0.25, 0.5, math.nan]  # per rank, at the last evaluation
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RANDOM = -30.5  # a uniformly random policy's team return, measured once before training
OPTIMUM = optimal_team_return(AGENTS, 0)[0]  # the default world's, for 3 agents
# The eval table as versions before the paired references wrote it, and as they write it now: the tests spell
# the columns out, so they do not depend on what telemetry declares today.
OLD_EVAL = ("step", "own_return", "team_return", "optimal_share")
NEW_EVAL = (*OLD_EVAL, "random_team_return", "reference_team_return", "metric", "random_metric", "reference_metric")
# A coupled world's paired references, per evaluation: random actions and the reference policy on its episodes.
RANDOM_PER_EVAL = [-80.0, -70.0, -75.0]
REFERENCE_PER_EVAL = [-40.0, -36.0, -39.0]
COUPLED_TEAM = [-78.0, -60.0, -57.0]
WIN_RATE, RANDOM_WIN, REFERENCE_WIN = [0.0, 0.25, 0.5], [0.0, 0.0, 0.125], [0.5, 0.75, 0.625]


def write_run(run_dir: Path, cfg: Config | None = None, team: list[float] = TEAM,
              team_on_rank: dict[int, list[float]] | None = None, paired: bool = False, metric: str = "",
              complete: bool = True) -> Path:
    """A run folder as `python -m odmar_mpi.run` leaves it: config.toml and one records file per rank. `paired`:
    the eval table carries the paired references (RANDOM_PER_EVAL, REFERENCE_PER_EVAL) and the metric."""
    cfg = cfg or Config()
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    if complete:
        (run_dir / "COMPLETE").write_text(f"{LAST_EPISODE_STEP}\n")
    for rank in range(AGENTS):
        tables = {**NODE_TABLES, "eval": NEW_EVAL if paired else OLD_EVAL, "random_eval": OLD_EVAL,
                  **learner_class(cfg.run.algorithm).tables}
        records = Records(tables)
        for step in range(50, LAST_EPISODE_STEP + 1, 50):
            records.append("episodes", step=step, own_return=1.0, **{"return": 3.0})
        rank_team = (team_on_rank or {}).get(rank, team)
        records.append("random_eval", step=0, own_return=RANDOM / AGENTS, team_return=RANDOM, optimal_share=math.nan)
        for k, step in enumerate(EVAL_STEPS):
            own = team[k] / AGENTS + (rank - 1) * 0.5  # offsets -0.5, 0, 0.5 sum to zero over the ranks
            last = k == len(EVAL_STEPS) - 1
            references = {}
            if paired:
                references = {"random_team_return": RANDOM_PER_EVAL[k], "reference_team_return": REFERENCE_PER_EVAL[k],
                              "metric": WIN_RATE[k] if metric else math.nan,
                              "random_metric": RANDOM_WIN[k] if metric else math.nan,
                              "reference_metric": REFERENCE_WIN[k] if metric else math.nan}
            records.append("eval", step=step, own_return=own, team_return=rank_team[k], optimal_share=math.nan,
                           **references)
            phases = dict.fromkeys(PHASES, 0.0) | {"env": (1 + rank) * (k + 1) / 3, "model": 2.0 * (k + 1) / 3,
                                                   "step_gossip": 0.5 * rank * (k + 1) / 3}
            records.append("timing", step=step, **phases, waiting=0.25 * rank * (k + 1) / 3)
            if "sac" in tables:
                records.append("sac", step=step, critic_loss=1.0, actor_loss=-1.0, alpha=0.1, entropy=-2.0, q_mean=5.0)
            if cfg.uses_model:
                holdout = math.nan if (rank == 2 and k == 0) else HOLDOUT[k] + 0.125 * rank
                records.append("model", step=step, consensus_rounds=4 if (rank == 1 and k == 1) else 3,
                               consensus_residual=(rank + 1) * 10.0 ** -(10 + k), holdout_rmse=holdout,
                               bonus_mean=0.1, std_mean=0.2, imagined_reward_mean=0.3, posterior_failed=0.0)
                records.append("model_eval", step=step, model_rmse=EVAL_RMSE[rank] if last else 1.0)
        attrs = {"config": to_toml(cfg), "version": "0.1.0", "rank": rank, "agents": AGENTS, "device": "cpu"}
        if paired:
            attrs["metric"] = metric
        records.write(records_path(run_dir, rank), attrs)
    return run_dir


def report(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def config(algorithm: str = "odmar", **run: object) -> Config:
    cfg = Config()
    cfg.run = dataclasses.replace(cfg.run, algorithm=algorithm, **run)
    return cfg


def sac_config() -> Config:
    return config("sac")


def spread_config(**run: object) -> Config:
    """MAMBA on simple_spread: a coupled world without a known optimum."""
    cfg = config("mamba", **run)
    cfg.env = dataclasses.replace(cfg.env, world="simple_spread", episode_length=25, reward_sharing="local")
    return cfg


# ---------------------------------------------------------------------- one run


def test_the_label_names_local_rewards_only_where_they_differ_from_the_team_reward():
    assert run_label(spread_config()) == "mamba, local rewards"
    smax = spread_config()
    smax.env = dataclasses.replace(smax.env, world="smax")  # every ally's own reward is SMAX's team reward
    assert run_label(smax) == "mamba"


def test_json_summary_is_what_the_records_say(tmp_path):
    run = write_run(tmp_path / "run")
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == str(run) and summary["label"] == "odmar beta=0.01"
    assert (summary["agents"], summary["steps"], summary["planned_steps"]) == (AGENTS, LAST_EPISODE_STEP, 15000)
    assert (summary["seed"], summary["warmup_steps"], summary["complete"]) == (0, 5000, True)
    assert summary["eval"] == [{"step": s, "team_return": r, "optimal_share": r / OPTIMUM}
                               for s, r in zip(EVAL_STEPS, TEAM)]
    assert (summary["algorithm"], summary["env"]) == ("odmar", "reward-collection")
    assert summary["final_team_return"] == 9.0
    # A run of an older version: random actions once before training; no reference policy, no metric.
    assert summary["optimal_team_return"] == OPTIMUM and summary["random_team_return"] == RANDOM
    assert summary["random_episodes"] == "before training"
    assert summary["reference_team_return"] is None and summary["final_reference_share"] is None
    assert summary["metric"] is None and not any(key.endswith("win_rate") for key in summary)
    assert summary["final_optimal_share"] == 9.0 / OPTIMUM
    assert summary["steps_to_share"] == {"0.9": None, "0.95": None, "0.98": None}
    assert summary["best"] == {"step": 200, "team_return": 12.25}
    # Means over ranks; rank 2's missing first held-out error is left out, not counted as zero.
    assert summary["model_error"] == {"updates": 3, "first_step": 100, "first_holdout_rmse": 0.5 + 0.0625,
                                      "last_step": 300, "last_holdout_rmse": 0.125 + 0.125, "final_eval_rmse": 0.375}
    assert summary["consensus"] == {"rounds_min": 3, "rounds_max": 4, "max_residual": 3e-10,
                                    "last_max_residual": 3 * 10.0**-12}
    timing = summary["timing"]
    assert timing["step"] == 300 and timing["total_s"] == 4.5
    assert timing["seconds"] == dict.fromkeys(PHASES, 0.0) | {"env": 2.0, "model": 2.0, "step_gossip": 0.5}
    assert timing["waiting_s"] == 0.25
    assert timing["steps_per_s"] == 300 / 4.5
    assert summary["warnings"] == []


def test_json_gives_the_final_evaluations_paired_references_and_the_metric_by_its_name(tmp_path):
    run = write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM, paired=True, metric="win_rate")
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # The final evaluation's own episodes, not the random-policy evaluation before training (RANDOM).
    assert summary["random_team_return"] == -75.0 and summary["random_episodes"] == "final evaluation"
    assert summary["reference_team_return"] == -39.0
    assert summary["final_reference_share"] == (-57.0 + 75.0) / (-39.0 + 75.0)  # 0.5
    assert summary["optimal_team_return"] is None and summary["final_optimal_share"] is None
    assert summary["metric"] == "win_rate"
    assert (summary["final_win_rate"], summary["random_win_rate"], summary["reference_win_rate"]) == (0.5, 0.125, 0.625)
    first = summary["eval"][0]
    assert first == {"step": 100, "team_return": -78.0, "optimal_share": None, "random_team_return": -80.0,
                     "reference_team_return": -40.0, "reference_share": (-78.0 + 80.0) / (-40.0 + 80.0),
                     "win_rate": 0.0, "random_win_rate": 0.0, "reference_win_rate": 0.5}


def test_a_world_without_a_metric_gives_no_metric_keys(tmp_path):
    run = write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM, paired=True, metric="")
    summary = summarise(run)
    assert summary["metric"] is None and summary["final_reference_share"] == 0.5
    assert set(summary["eval"][0]) == {"step", "team_return", "optimal_share", "random_team_return",
                                       "reference_team_return", "reference_share"}


def test_the_table_says_the_paired_references_and_the_metric_in_words(tmp_path):
    run = write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM, paired=True, metric="win_rate")
    table = format_table(summarise(run))
    assert ("On the final evaluation's episodes the team collects -57.0, 0.50 of the way from uniformly random "
            "actions (-75.0) to the world's reference policy (-39.0); this world's optimum is not known.") in table
    assert ("Win rate on the final evaluation's episodes: 0.50 (agents acting at random 0.12, the world's reference "
            "policy 0.62).") in table
    header = next(line for line in table.splitlines() if "team return" in line and "step" in line)
    assert header.split() == ["step", "team", "return", "random", "reference", "of", "the", "way", "win", "rate"]
    assert "  -57.000     -75.00     -39.00        0.50       0.50" in table


def test_the_table_shows_final_best_model_consensus_and_time(tmp_path):
    table = format_table(summarise(write_run(tmp_path / "run")))
    assert "final team return 9.000 at step 300; best 12.250 at step 200" in table
    assert (f"The team collects {9.0 / OPTIMUM:.1%} of the best possible return ({OPTIMUM:.1f}, every agent going "
            f"straight to its best site); agents acting at random collect -30.5.") in table
    assert "0.5625 at step 100 -> 0.25 at step 300" in table
    assert "3-4 gossip rounds" in table and "3.00e-10" in table
    assert "66.7 steps/s" in table
    assert "WARNING" not in table


def test_an_older_coupled_run_says_its_random_return_came_from_other_episodes(tmp_path):
    table = format_table(summarise(write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM)))
    assert ("The team's final return is -57.0 (this world's optimum is not known); agents acting at random collected "
            "-30.5 once before training, on other episodes.") in table


def test_the_table_says_whether_evaluations_sampled_their_actions(tmp_path):
    assert "(sum over agents, deterministic policy)" in format_table(summarise(write_run(tmp_path / "run")))
    cfg = Config()
    for algorithm, evaluation, policy in [("ippo", "sample", "actions sampled from the policy"),
                                          ("mamba", "sample", "actions sampled from the policy"),
                                          ("mamba", "argmax", "deterministic policy"),
                                          ("sac", "sample", "deterministic policy")]:  # SAC ignores [ppo]
        cfg.run = dataclasses.replace(cfg.run, algorithm=algorithm)
        cfg.ppo = dataclasses.replace(cfg.ppo, evaluation=evaluation)
        assert evaluation_policy(cfg) == policy, (algorithm, evaluation)


def test_a_long_run_shows_first_every_kth_and_last_evaluation():
    assert eval_rows_to_show(5) == [0, 1, 2, 3, 4]
    shown = eval_rows_to_show(100)
    assert shown[0] == 0 and shown[-1] == 99 and len(shown) <= 12
    assert len(set(np.diff(shown[:-1]))) == 1  # evenly spaced apart from the last


def test_disagreeing_team_returns_are_reported(tmp_path):
    close = [r * (1 + 1e-12) for r in TEAM]  # summation-order round-off: allowed
    off = [TEAM[0], TEAM[1] * (1 + 1e-8), TEAM[2]]  # beyond 1e-9 relative: a consensus failure
    run = write_run(tmp_path / "run", team_on_rank={1: close, 2: off})
    warnings = summarise(run)["warnings"]
    assert len(warnings) == 1
    assert "step 200, rank 2" in warnings[0] and "1 of 3 evaluations" in warnings[0]
    result = report(run)
    assert result.exit_code == 0 and "WARNING: team return differs" in result.stdout


def test_a_missing_rank_file_is_named_and_exits_2(tmp_path):
    run = write_run(tmp_path / "run")
    missing = records_path(run, 1)
    missing.unlink()
    result = report(run)
    assert result.exit_code == 2
    assert str(missing) in result.stderr and "3 agents" in result.stderr


def test_a_folder_without_records_says_what_is_expected_and_exits_2(tmp_path):
    result = report(tmp_path)
    assert result.exit_code == 2
    assert str(tmp_path) in result.stderr and "rank0000.h5" in result.stderr


def test_gif_and_csv_take_one_run(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    for option in ("--gif", "--csv"):
        result = report(a, b, option, tmp_path / "out")
        assert result.exit_code == 2 and f"{option} takes a single RUN_DIR (got 2)" in result.stderr


# ---------------------------------------------------------------------- plots


def test_several_runs_give_a_json_list_and_one_plot_grouped_by_label(tmp_path):
    seed0 = write_run(tmp_path / "odmar0")
    seed1 = write_run(tmp_path / "odmar1", team=[r + 2.0 for r in TEAM])
    sac = write_run(tmp_path / "sac", cfg=sac_config())
    plot = tmp_path / "curves.png"
    result = report(seed0, seed1, sac, "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)
    assert [(s["run"], s["label"]) for s in summaries] == [(str(seed0), "odmar beta=0.01"),
                                                           (str(seed1), "odmar beta=0.01"), (str(sac), "sac")]
    assert summaries[2]["model_error"] is None and summaries[2]["consensus"] is None
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_several_runs_in_words_end_with_the_iqm_per_label(tmp_path):
    runs = [write_run(tmp_path / f"odmar{k}", team=[r + 2.0 * k for r in TEAM]) for k in range(3)]
    result = report(*runs)
    assert result.exit_code == 0, result.output
    finals = [(9.0 + 2.0 * k) / OPTIMUM for k in range(3)]
    assert f"IQM {100 * iqm(finals):.1f}%" in result.stdout and "over 3 seed(s)" in result.stdout


def test_the_plot_draws_the_iqm_of_a_labels_runs_with_a_bootstrap_band(tmp_path):
    offsets = [0.0, 2.0, 4.0, 100.0]  # the IQM of four runs is the mean of the middle two: 3, not the mean 26.5
    runs = [load_run(write_run(tmp_path / f"a{k}", team=[r + offset for r in TEAM]))
            for k, offset in enumerate(offsets)]
    runs.append(load_run(write_run(tmp_path / "sac", cfg=sac_config())))
    fig = plot_learning_curves(runs, tmp_path / "curves.png")
    returns_axis, model_axis = fig.axes
    odmar, sac = returns_axis.get_lines()
    assert odmar.get_label() == "odmar beta=0.01 (4 runs)" and sac.get_label() == "sac (1 run)"
    np.testing.assert_array_equal(odmar.get_xdata(), EVAL_STEPS)
    np.testing.assert_allclose(odmar.get_ydata(), [r + 3.0 for r in TEAM], rtol=1e-15)
    assert len(returns_axis.collections) == 1  # a band for the four odmar runs, none for the single sac run
    band = returns_axis.collections[0].get_paths()[0].vertices
    low, high = bootstrap_ci([TEAM[0] + offset for offset in offsets])
    assert np.isclose(band[:, 1], low, rtol=1e-12).any() and np.isclose(band[:, 1], high, rtol=1e-12).any()
    assert "IQM" in returns_axis.get_title() and "bootstrap" in returns_axis.get_title()
    assert len(model_axis.get_lines()) == 1  # the sac run has no model


def test_a_single_run_has_no_band_and_no_band_title(tmp_path):
    fig = plot_learning_curves([load_run(write_run(tmp_path / "a"))], tmp_path / "curves.png")
    assert not fig.axes[0].collections and "band" not in fig.axes[0].get_title()


def test_a_runs_plot_shows_the_optimum_random_actions_and_a_share_axis(tmp_path):
    fig = plot_run(load_run(write_run(tmp_path / "run")), tmp_path / "curve.png")
    returns = fig.axes[0]
    lines = {line.get_label(): line for line in returns.get_lines()}
    assert np.all(np.asarray(lines[f"optimum ({OPTIMUM:.1f})"].get_ydata()) == OPTIMUM)
    assert np.all(np.asarray(lines["uniformly random actions, before training (-30.5)"].get_ydata()) == RANDOM)
    np.testing.assert_array_equal(lines["team (sum over agents)"].get_ydata(), TEAM)
    share = returns.child_axes[0]  # the secondary y-axis
    assert share.get_ylabel() == "share of the optimum"


def test_a_coupled_runs_plot_draws_references_per_evaluation_and_the_metric(tmp_path):
    run = load_run(write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM, paired=True, metric="win_rate"))
    fig = plot_run(run, tmp_path / "curve.png")
    returns, metric = fig.axes[:2]
    lines = {line.get_label(): line for line in returns.get_lines()}
    np.testing.assert_array_equal(lines["uniformly random actions, on each evaluation's episodes"].get_ydata(),
                                  RANDOM_PER_EVAL)
    np.testing.assert_array_equal(lines["the world's reference policy, on each evaluation's episodes"].get_ydata(),
                                  REFERENCE_PER_EVAL)
    assert metric.get_ylabel() == "win rate"
    np.testing.assert_array_equal(metric.get_lines()[0].get_ydata(), WIN_RATE)


def test_final_report_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    final_report(run)
    out = capsys.readouterr().out
    assert "final team return 9.000" in out
    assert (run / "learning_curve.png").read_bytes()[:8] == PNG_MAGIC


def test_final_report_without_matplotlib_says_how_to_get_the_plot(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    final_report(run)
    out = capsys.readouterr().out
    assert "final team return 9.000" in out and "pip install .[plot]" in out
    assert not (run / "learning_curve.png").exists()


# ---------------------------------------------------------------------- CSV


def test_csv_holds_exactly_the_hdf5_rows_of_every_table_of_every_rank(tmp_path):
    run = write_run(tmp_path / "run", cfg=spread_config(), team=COUPLED_TEAM, paired=True, metric="win_rate")
    out = tmp_path / "csv"
    result = report(run, "--csv", out)
    assert result.exit_code == 0, result.output
    for rank in range(AGENTS):
        tables, attrs = read_records(records_path(run, rank))
        folder = out / f"rank{rank:04d}"
        assert sorted(p.stem for p in folder.glob("*.csv")) == sorted(tables)
        for name, table in tables.items():
            with open(folder / f"{name}.csv", newline="") as f:
                header, *rows = list(csv.reader(f))
            assert header[0] == "step" and sorted(header) == sorted(table), name
            assert len(rows) == len(table["step"]), name
            for i, column in enumerate(header):
                written = np.array([float(row[i]) for row in rows])
                np.testing.assert_array_equal(written, table[column], err_msg=f"{name}.{column}")  # NaN == NaN here
        assert json.loads((folder / "attributes.json").read_text())["metric"] == attrs["metric"] == "win_rate"


# ---------------------------------------------------------------------- comparison over seeds

# Shares of the optimum at the three evaluations of seeds 0-4 of setting "a" (warm-up 50: evaluations at 50, 150
# and 250 training steps). None sits on a threshold, so round-off cannot decide a step.
SHARES_BY_SEED = [[0.3, 0.4, 0.5], [0.3, 0.92, 0.93], [0.91, 0.96, 0.955], [0.5, 0.97, 0.97], [0.99, 0.99, 0.99]]
WARMUP = 50


def write_sweep_folder(folder: Path) -> Path:
    """Setting "a": seeds 0-4 with SHARES_BY_SEED (seed 3 not complete), seed 5 planned but never started;
    setting "sac": one seed."""
    for seed, shares in enumerate(SHARES_BY_SEED):
        optimum = optimal_team_return(AGENTS, seed)[0]
        write_run(folder / "a" / f"seed{seed}", cfg=config(seed=seed, warmup_steps=WARMUP),
                  team=[share * optimum for share in shares], complete=seed != 3)
    write_run(folder / "sac" / "seed0", cfg=config("sac", warmup_steps=WARMUP),
              team=[0.0, 0.5 * OPTIMUM, 0.6 * OPTIMUM])
    runs = [("a", seed) for seed in range(6)] + [("sac", 0)]
    write_sweep(folder, Sweep([Setting("a", "/configs/a.toml"), Setting("sac", "/configs/sac.toml")], runs, AGENTS))
    return folder


def expected_bootstrap(values: list[float]) -> tuple[float, float]:
    """rliable's percentile interval, written out: 2000 resamples of the seeds with replacement, the IQM of each."""
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(BOOTSTRAP):
        sample = np.sort(np.asarray(values)[rng.integers(len(values), size=len(values))])
        cut = len(values) // 4
        stats.append(sample[cut:len(values) - cut].mean())
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([0.5, 0.93, 0.955, 0.97, 0.99]) == pytest.approx((0.93 + 0.955 + 0.97) / 3, rel=1e-15)
    assert iqm([1.0, 100.0, 2.0, 3.0, -50.0, 4.0, 5.0, 6.0]) == (3.0 + 4.0 + 2.0 + 5.0) / 4  # 8 values: cut 2 a side
    assert iqm([7.0]) == 7.0 and iqm([1.0, 3.0]) == 2.0  # fewer than four: nothing cut
    assert bootstrap_ci([7.0]) == (7.0, 7.0)  # one seed: no interval to speak of


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_iqms():
    finals = [0.5, 0.93, 0.955, 0.97, 0.99]
    low, high = bootstrap_ci(finals)
    assert (low, high) == pytest.approx(expected_bootstrap(finals), rel=1e-15)
    assert min(finals) <= low < iqm(finals) < high <= max(finals)


def test_compare_json_gives_the_iqm_interval_every_seed_and_steps_to_shares(tmp_path):
    folder = write_sweep_folder(tmp_path / "sweep")
    plot = tmp_path / "compare.png"
    result = report(folder, "--compare", "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert comparison["steps"] == "training steps per agent after warm-up"
    a, sac = comparison["settings"]
    assert (a["name"], a["figure"], a["figure_name"]) == ("a", "optimal_share", "share of the optimum")
    finals = [shares[-1] for shares in SHARES_BY_SEED]
    assert a["seeds"] == [0, 1, 2, 3, 4] and [p["seed"] for p in a["per_seed"]] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([p["final"] for p in a["per_seed"]], finals, rtol=1e-12)
    assert a["iqm"] == pytest.approx((0.93 + 0.955 + 0.97) / 3, rel=1e-12)
    assert a["ci95"] == pytest.approx(expected_bootstrap(finals), rel=1e-12)
    assert a["ci95"][0] <= a["iqm"] <= a["ci95"][1]
    assert a["missing"] == {"5": f"not started ({folder / 'a' / 'seed5'} does not exist)"}
    assert a["incomplete"] == [3]
    # Training steps after warm-up to 90/95/98% of the optimum: per seed (None = never) and the median.
    assert [p["steps_to_share"] for p in a["per_seed"]] == [
        {"0.9": None, "0.95": None, "0.98": None}, {"0.9": 150, "0.95": None, "0.98": None},
        {"0.9": 50, "0.95": 150, "0.98": None}, {"0.9": 150, "0.95": 150, "0.98": None},
        {"0.9": 50, "0.95": 50, "0.98": 50}]
    assert {share: v["median"] for share, v in a["steps_to_share"].items()} == {"0.9": 150, "0.95": 150, "0.98": None}
    # The curve: the IQM over seeds at each evaluation, with its band.
    assert a["curve"]["steps"] == [50, 150, 250]
    np.testing.assert_allclose(a["curve"]["iqm"], [iqm([s[k] for s in SHARES_BY_SEED]) for k in range(3)], rtol=1e-12)
    assert all(low <= mid <= high for low, mid, high in zip(a["curve"]["low"], a["curve"]["iqm"], a["curve"]["high"]))
    assert sac["seeds"] == [0] and sac["iqm"] == pytest.approx(0.6, rel=1e-12) and sac["ci95"] == [sac["iqm"]] * 2
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_compare_in_words_names_the_figure_every_seed_and_the_missing_one(tmp_path):
    folder = write_sweep_folder(tmp_path / "sweep")
    result = report(folder, "--compare")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "a (odmar beta=0.01, 3 agents, reward-collection): final share of the optimum over 5 seed(s)" in text
    assert "per seed: s0 50.0%, s1 93.0%, s2 95.5%, s3 97.0%, s4 99.0%" in text
    assert "steps to 90% / 95% / 98% of the optimum, median over seeds: 150 / 150 / never" in text
    assert "seed 5: missing, not started" in text
    assert "not complete (still running, or stopped: continue the sweep): s3 at step 350 of 10050" in text


def test_compare_without_sweep_json_takes_each_subfolder_as_a_setting(tmp_path):
    folder = write_sweep_folder(tmp_path / "sweep")
    (folder / "sweep.json").unlink()
    write_run(folder / "a" / "seed0.stale-1")  # a stale run folder a sweep moved aside: not a seed
    [a, sac] = settings_from_folders([folder])
    assert (a.name, sac.name) == ("a", "sac") and len(a.summaries) == 5 and not a.missing


def test_compare_prefers_the_paired_reference_share_then_the_metric_then_the_return(tmp_path):
    paired = [summarise(write_run(tmp_path / f"p{k}", cfg=spread_config(seed=k), team=COUPLED_TEAM, paired=True,
                                  metric="win_rate")) for k in range(2)]
    older = summarise(write_run(tmp_path / "old", cfg=spread_config(seed=2), team=COUPLED_TEAM))
    assert figures_of(paired[0]) == ["reference_share", "win_rate", "team_return"]
    assert figures_of(older) == ["team_return"]
    both = compare_setting(SettingRuns("paired", paired))
    assert both["figure"] == "reference_share" and both["iqm"] == 0.5 and both["random_mean"] == 0.0
    assert both["curve"]["iqm"] == pytest.approx([(t - r) / (f - r) for t, r, f in
                                                  zip(COUPLED_TEAM, RANDOM_PER_EVAL, REFERENCE_PER_EVAL)], rel=1e-12)
    # One seed of an older version has no paired references: every seed falls back to what all have.
    mixed = compare_setting(SettingRuns("mixed", [*paired, older]))
    assert mixed["figure"] == "team_return" and mixed["iqm"] == -57.0 and mixed["seeds"] == [0, 1, 2]
    without_reference = [dict(s, final_reference_share=None) for s in paired]
    assert compare_setting(SettingRuns("metric", without_reference))["figure"] == "win_rate"


def test_compare_refuses_a_folder_without_runs(tmp_path):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    result = report(tmp_path / "empty", "--compare")
    assert result.exit_code == 2 and "holds no runs" in result.stderr
