"""`python -m odmar_mpi.report` on fake run folders whose records hold known numbers (no MPI)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import env as world
from env.optimum import optimal_team_return
from odmar_mpi.config import Config, to_toml
from odmar_mpi.learners import learner_class
from odmar_mpi.records import Records, records_path
from odmar_mpi.report import (eval_rows_to_show, evaluation_policy, final_report, format_table, load_run, main,
                              plot_learning_curves, rollout_frames, summarise)
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


def write_run(run_dir: Path, cfg: Config | None = None, team: list[float] = TEAM,
              team_on_rank: dict[int, list[float]] | None = None) -> Path:
    """A run folder as `python -m odmar_mpi.run` leaves it: config.toml and one records file per rank."""
    cfg = cfg or Config()
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    for rank in range(AGENTS):
        records = Records({**NODE_TABLES, **learner_class(cfg.run.algorithm).tables})
        for step in range(50, LAST_EPISODE_STEP + 1, 50):
            records.append("episodes", step=step, own_return=1.0, **{"return": 3.0})
        rank_team = (team_on_rank or {}).get(rank, team)
        records.append("random_eval", step=0, own_return=RANDOM / AGENTS, team_return=RANDOM, optimal_share=math.nan)
        for k, step in enumerate(EVAL_STEPS):
            own = team[k] / AGENTS + (rank - 1) * 0.5  # offsets -0.5, 0, 0.5 sum to zero over the ranks
            last = k == len(EVAL_STEPS) - 1
            records.append("eval", step=step, own_return=own, team_return=rank_team[k], optimal_share=math.nan)
            phases = dict.fromkeys(PHASES, 0.0) | {"env": (1 + rank) * (k + 1) / 3, "model": 2.0 * (k + 1) / 3,
                                                   "step_gossip": 0.5 * rank * (k + 1) / 3}
            records.append("timing", step=step, **phases, waiting=0.25 * rank * (k + 1) / 3)
            records.append("sac", step=step, critic_loss=1.0, actor_loss=-1.0, alpha=0.1, entropy=-2.0, q_mean=5.0)
            if cfg.uses_model:
                holdout = math.nan if (rank == 2 and k == 0) else HOLDOUT[k] + 0.125 * rank
                records.append("model", step=step, consensus_rounds=4 if (rank == 1 and k == 1) else 3,
                               consensus_residual=(rank + 1) * 10.0 ** -(10 + k), holdout_rmse=holdout,
                               bonus_mean=0.1, std_mean=0.2, imagined_reward_mean=0.3, posterior_failed=0.0)
                records.append("model_eval", step=step, model_rmse=EVAL_RMSE[rank] if last else 1.0)
        records.write(records_path(run_dir, rank), {"config": to_toml(cfg), "version": "0.1.0", "rank": rank,
                                                     "agents": AGENTS, "device": "cpu"})
    return run_dir


def report(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def sac_config() -> Config:
    cfg = Config()
    cfg.run = dataclasses.replace(cfg.run, algorithm="sac")
    return cfg


def test_json_summary_is_what_the_records_say(tmp_path):
    run = write_run(tmp_path / "run")
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == str(run) and summary["label"] == "odmar beta=0.01"
    assert (summary["agents"], summary["steps"], summary["planned_steps"]) == (AGENTS, LAST_EPISODE_STEP, 15000)
    assert summary["eval"] == [{"step": s, "team_return": r, "optimal_share": r / OPTIMUM} for s, r in zip(EVAL_STEPS, TEAM)]
    assert (summary["algorithm"], summary["env"]) == ("odmar", "reward-collection")
    assert summary["final_team_return"] == 9.0
    assert summary["optimal_team_return"] == OPTIMUM and summary["random_team_return"] == RANDOM
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


def test_the_table_shows_final_best_model_consensus_and_time(tmp_path):
    table = format_table(summarise(write_run(tmp_path / "run")))
    assert "final team return 9.000 at step 300; best 12.250 at step 200" in table
    assert (f"The team collects {9.0 / OPTIMUM:.1%} of the best possible return ({OPTIMUM:.1f}, every agent going "
            f"straight to its best site); agents acting at random collect -30.5.") in table
    assert "0.5625 at step 100 -> 0.25 at step 300" in table
    assert "3-4 gossip rounds" in table and "3.00e-10" in table
    assert "66.7 steps/s" in table
    assert "WARNING" not in table


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


def test_the_plot_draws_the_mean_of_a_labels_runs_with_a_band(tmp_path):
    runs = [load_run(write_run(tmp_path / "a")), load_run(write_run(tmp_path / "b", team=[r + 2.0 for r in TEAM])),
            load_run(write_run(tmp_path / "sac", cfg=sac_config()))]
    fig = plot_learning_curves(runs, tmp_path / "curves.png")
    returns_axis, model_axis = fig.axes
    odmar, sac = returns_axis.get_lines()
    assert odmar.get_label() == "odmar beta=0.01 (2 runs)" and sac.get_label() == "sac (1 run)"
    np.testing.assert_array_equal(odmar.get_xdata(), EVAL_STEPS)
    np.testing.assert_array_equal(odmar.get_ydata(), [r + 1.0 for r in TEAM])
    assert len(returns_axis.collections) == 1  # a band for the two odmar runs, none for the single sac run
    assert len(model_axis.get_lines()) == 1  # the sac run has no model


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


def test_the_rollout_renders_every_second_step_and_the_last(tmp_path):
    cfg = Config()
    cfg.env = dataclasses.replace(cfg.env, episode_length=7)
    standing_still = [lambda obs: np.zeros(world.ACT_DIM)] * AGENTS
    frames, team_return = rollout_frames(cfg, standing_still, every=2, size=120)
    assert len(frames) == 5  # t = 0, 2, 4, 6 and the last step 7
    assert frames[0].size == (120, 120)
    # Agents that never move collect the reward of their start positions at every step.
    still = world.reward(world.start_positions(AGENTS), np.zeros((AGENTS, world.ACT_DIM))).sum()
    assert still > 0 and team_return == pytest.approx(7 * still, rel=1e-12)  # round-off of 7 additions


def test_gif_animates_the_newest_checkpoint_every_rank_has(tmp_path):
    sac_module = pytest.importorskip("odmar_mpi.policy.sac")
    import torch
    from PIL import Image

    from odmar_mpi.checkpoint import save_checkpoint

    cfg = Config()
    cfg.env = dataclasses.replace(cfg.env, episode_length=9)
    cfg.sac = dataclasses.replace(cfg.sac, hidden=[8, 8])
    run = write_run(tmp_path / "run", cfg=cfg)
    sac_cfg = sac_module.SACConfig(hidden=(8, 8))
    for rank in range(AGENTS):
        sac = sac_module.SAC(world.OBS_DIM, world.ACT_DIM, sac_cfg, torch.device("cpu"), seed=rank,
                             obs_scale=world.WORLD_HIGH)
        save_checkpoint(run, rank, 300, {"learner": {"sac": sac.state_dict()}}, keep=2)
        if rank == 0:  # a newer step only rank 0 has: not usable for the whole team
            save_checkpoint(run, rank, 400, {"learner": {"sac": sac.state_dict()}}, keep=2)
    gif = tmp_path / "team.gif"
    result = report(run, "--gif", gif)
    assert result.exit_code == 0, result.output
    assert "actors of step 300" in result.stderr
    with Image.open(gif) as image:
        assert image.n_frames == 6  # t = 0, 2, 4, 6, 8 and the last step 9
        assert image.size == (300, 300)
