"""Live logs: the TensorBoard event files a run writes as it goes (read back with TensorBoard's own
EventAccumulator and compared with the HDF5 records, the source of truth), and rank 0's progress line with each
learner's key figures. The end-to-end test starts its own MPI jobs (serial pass)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from odmar_mpi.checkpoint import checkpoint_path
from odmar_mpi.config import load_config, to_toml
from odmar_mpi.records import read_records, records_path
from odmar_mpi.learners.base import figures
from odmar_mpi.telemetry import Telemetry, duration
from odmar_mpi.tensorboard import AGENT_TAGS, TEAM, agent_name, agent_tag, log_dir

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

RANKS = 2
TEAM_TAGS = {"eval/episodic_return", "eval/normalized_return", "eval/random_return", "eval/reference_return",
             "charts/episodic_return", "charts/SPS"}
LOSS_TAGS = {"losses/reconstruction_loss", "losses/reward_loss", "losses/value_loss", "losses/policy_loss",
             "losses/entropy"}


def scalars(run_dir, name: str) -> dict[str, tuple[list[int], np.ndarray]]:
    """{tag: (steps, values)} of one writer's folder, every point kept (size guidance 0)."""
    accumulator = event_accumulator.EventAccumulator(str(log_dir(run_dir, name)), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: ([event.step for event in accumulator.Scalars(tag)],
                  np.array([event.value for event in accumulator.Scalars(tag)]))
            for tag in accumulator.Tags()["scalars"]}


def as_float32(values) -> np.ndarray:
    """TensorBoard stores scalars as float32: the records' float64 values rounded so are what must come back."""
    return np.asarray(values, dtype=np.float32)


def snapshot(run_dir) -> dict:
    """What a reader sees now: every writer's scalars and every rank's records."""
    return {"team": scalars(run_dir, TEAM),
            "agents": [scalars(run_dir, agent_name(rank)) for rank in range(RANKS)],
            "records": [read_records(records_path(run_dir, rank))[0] for rank in range(RANKS)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MAMBA run to step 100 with checkpoints at 50 and 100 (read as it ended); then, on a copy, the
    checkpoint of step 100 of rank 1 removed, as if the job had died writing it, and the run resumed from step 50
    to step 200: the events of steps 50 to 100 written before are stale and must not show twice."""
    mamba_e2e = pytest.importorskip("test_mamba_e2e")  # skips without mpe2
    base = tmp_path_factory.mktemp("live")
    first = base / "first"
    result = mamba_e2e.run_job("--out", str(first), overrides=[*mamba_e2e.TINY, "run.train_steps=50",
                                                                "run.checkpoint_every=50"])
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = snapshot(first)
    resumed = base / "resumed"
    shutil.copytree(first, resumed)
    checkpoint_path(resumed, 1, 100).unlink()
    result = mamba_e2e.run_job("--resume", str(resumed), overrides=["run.train_steps=150"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming from step 50" in result.stderr
    return fresh, snapshot(resumed)


def check_against_records(seen: dict, eval_steps: list[int], mamba_steps: list[int]) -> None:
    """Every tag written, the team's curves equal to rank 0's records, one point per learner row on every rank."""
    team, (tables, *_) = seen["team"], seen["records"]
    assert TEAM_TAGS <= set(team), sorted(team)
    assert "eval/optimal_share" not in team  # simple_spread's optimum is unknown: NaN rows leave no point
    evals = tables["eval"]
    assert evals["step"].tolist() == eval_steps
    steps, values = team["eval/episodic_return"]
    assert steps == eval_steps
    np.testing.assert_array_equal(values, as_float32(evals["team_return"]))
    normalized = (evals["team_return"] - evals["random_team_return"]) / (evals["reference_team_return"]
                                                                         - evals["random_team_return"])
    np.testing.assert_array_equal(team["eval/normalized_return"][1], as_float32(normalized))
    np.testing.assert_array_equal(team["eval/reference_return"][1], as_float32(evals["reference_team_return"]))
    episodes = tables["episodes"]
    assert team["charts/episodic_return"][0] == episodes["step"].astype(int).tolist()
    np.testing.assert_array_equal(team["charts/episodic_return"][1], as_float32(episodes["return"]))
    sps_steps, sps = team["charts/SPS"]
    assert set(sps_steps) <= set(eval_steps) and len(set(sps_steps)) == len(sps_steps) and (sps > 0).all()
    for rank, (agent, tables) in enumerate(zip(seen["agents"], seen["records"])):
        assert LOSS_TAGS <= set(agent), (rank, sorted(agent))
        assert not set(agent) & TEAM_TAGS - {"charts/episodic_return"}, rank  # the team's curves are rank 0's alone
        rows = tables["mamba"]
        assert rows["step"].tolist() == mamba_steps, rank
        for column, tag in AGENT_TAGS["mamba"].items():
            steps, values = agent[tag]
            assert steps == mamba_steps, (rank, tag)
            np.testing.assert_array_equal(values, as_float32(rows[column]), err_msg=f"rank {rank} {tag}")
        np.testing.assert_array_equal(agent["eval/own_return"][1], as_float32(tables["eval"]["own_return"]))


def test_a_run_logs_the_team_curves_on_rank_0_and_every_learner_row_under_its_agent(runs):
    fresh, _ = runs
    check_against_records(fresh, eval_steps=[50, 100], mamba_steps=[50, 75, 100])
    steps, _ = fresh["team"]["charts/SPS"]
    assert steps == [50, 100]


def test_a_resumed_run_shows_every_step_once_with_the_values_of_its_records(runs):
    """Resumed from step 50: the points of steps 50-100 the first process wrote are hidden (purge_step), the rows
    the checkpoint holds at step 50 are written again, and those after it come from the resumed run."""
    _, resumed = runs
    check_against_records(resumed, eval_steps=[50, 100, 150, 200], mamba_steps=[50, 75, 100, 125, 150, 175, 200])
    steps, _ = resumed["team"]["charts/SPS"]
    assert steps == [100, 150, 200]  # wall-clock: the resumed process measures its own, from step 50 on


def test_tags_name_learner_columns_in_the_shared_vocabulary_and_leave_out_unnamed_node_columns():
    node = frozenset({"eval", "episodes", "timing"})
    assert agent_tag("ppo", "value_loss", node) == agent_tag("mamba", "value_loss", node) == "losses/value_loss"
    assert agent_tag("ppo", "entropy", node) == agent_tag("sac", "entropy", node) == "losses/entropy"
    assert agent_tag("sac", "critic_loss", node) == "losses/qf_loss"
    assert agent_tag("mamba", "step", node) is None
    assert agent_tag("timing", "env", node) is None  # a node table's column without a tag stays out
    assert agent_tag("new_table", "gradient_norm", node) == "new_table/gradient_norm"  # a learner's new column shows


# ---------------------------------------------------------------------------------------------- the progress line

def telemetry(optimal: float = 0.0, metric: str = "", warmup: int = 100, train: int = 900) -> Telemetry:
    cfg = load_config(None, [f"run.warmup_steps={warmup}", f"run.train_steps={train}"])
    return Telemetry({}, rank=0, optimal_team_return=optimal, attrs={"config": to_toml(cfg), "metric": metric})


def line(t: Telemetry, capsys, step: int, at: float, note: str = "", warmup: int = 100) -> str:
    """The progress line printed at `step` when the telemetry's clock reads `at` seconds."""
    t.now = lambda: at
    t.progress(step, warmup, note)
    return capsys.readouterr().out.rstrip("\n")


def evaluated(t: Telemetry, team: float, metric: float = math.nan, random: float = math.nan,
              reference: float = math.nan) -> None:
    t.baselines_measured(0, math.nan, {"random_team_return": random, "random_metric": math.nan,
                                       "reference_team_return": reference, "reference_metric": math.nan})
    t.evaluation(500, 1.0, team, metric)


def test_the_time_left_comes_from_the_rate_since_the_previous_line(capsys):
    t = telemetry()
    t.now = lambda: 0.0
    t.start_clock(0)
    first = line(t, capsys, 500, at=10.0)  # 50 steps/s; 500 of 1000 steps left
    assert "50 steps/s, ETA 10s" in first and first.startswith("step     500 [train]")
    assert "steps/s, ETA 6m40s" in line(t, capsys, 600, at=110.0)  # now 1 step/s, not the mean since the start
    assert "ETA 0s" in line(t, capsys, 1000, at=120.0)
    assert [duration(s) for s in (0.4, 59, 192, 7500, 3 * 86400 + 4 * 3600)] == ["0s", "59s", "3m12s", "2h05m", "3d04h"]


def test_the_line_says_how_the_team_stands_in_the_terms_its_world_has(capsys):
    t = telemetry(optimal=400.0)
    evaluated(t, 392.0)
    assert "team eval return   392.00 ( 98.0% of optimum) |" in line(t, capsys, 500, at=1.0)
    t = telemetry(metric="win_rate")  # SMAX: the win rate, before the share between the baselines
    evaluated(t, -3.0, metric=0.45, random=-10.0, reference=5.0)
    assert "(win rate  45%) |" in line(t, capsys, 500, at=1.0)
    t = telemetry()  # simple_spread: the share of the way from random actions to the reference policy
    evaluated(t, -60.0, random=-100.0, reference=-20.0)
    assert "( 50.0% random->ref) |" in line(t, capsys, 500, at=1.0)
    t = telemetry()  # neither: the return alone
    evaluated(t, -60.0, random=-100.0)
    assert line(t, capsys, 500, at=1.0).split(" | ")[1] == "team eval return   -60.00"


def test_only_rank_0_prints(capsys):
    t = Telemetry({}, rank=1, optimal_team_return=1.0, attrs={})
    t.progress(10, 0, "note")
    assert capsys.readouterr().out == ""


NOTES = {  # algorithm: (table: row values), the note they give
    "odmar": ({"model": dict(consensus_rounds=2, consensus_residual=1e-16, holdout_rmse=0.0123, bonus_mean=0.1,
                             std_mean=0.1, imagined_reward_mean=0.5, posterior_failed=0),
               "sac": dict(critic_loss=0.34, actor_loss=-5.0, alpha=0.042, entropy=1.0, q_mean=10.0)},
              "model RMSE 0.0123, critic loss   0.34"),
    "sac": ({"sac": dict(critic_loss=12.5, actor_loss=-5.0, alpha=0.042, entropy=1.0, q_mean=10.0)},
            "critic loss   12.5, alpha  0.042"),
    "mamba": ({"mamba": dict(reconstruction=3.57, reward_loss=0.212, discount_loss=0.1, kl=1.0, action_prediction=1.6,
                             model_loss=6.0, policy_loss=-0.01, value_loss=0.5, entropy=0.775, imagined_reward=-0.5,
                             real_reward=-0.6, disagreement=0.01, parameter_bytes=1e6, message_bytes_per_step=168,
                             approx_kl=0.01, clip_fraction=0.1, returns_mean=-1.0, imagined_starts=40)},
              "recon   3.57, reward loss  0.212, entropy  0.775"),
    "ippo": ({"ppo": dict(policy_loss=-0.01, value_loss=2.5e-5, entropy=1.61, approx_kl=0.01, clip_fraction=0.1,
                          entropy_coef=0.01, returns_mean=-1.0, samples=50, disagreement=0.01, parameter_bytes=1e6)},
             "entropy   1.61, value loss 2.5e-05"),
}


@pytest.mark.parametrize("algorithm", sorted(NOTES))
def test_each_learner_notes_its_key_figures_from_its_last_row_and_the_line_stays_short(algorithm, capsys):
    if algorithm in ("mamba", "ippo"):
        pytest.importorskip("mpe2")
    from test_learners import make_learner

    learner, _, records = make_learner(algorithm)
    empty = learner.progress_note()
    assert "-" in empty and not any(ch.isdigit() for ch in empty), empty  # nothing yet: placeholders, no numbers
    tables, expected = NOTES[algorithm]
    for table, values in tables.items():
        records.append(table, step=10, **{key: 99.0 for key in values})  # an older row must not show
        records.append(table, step=20, **values)
    note = learner.progress_note()
    assert note == expected
    assert len({len(figures(("x", value))) for value in (1.0, 0.0123, 999.0, math.nan)}) == 1  # aligned
    # the longest line it can be part of: a 7-digit step, a coupled world's share between the baselines
    t = telemetry(warmup=10**6, train=10**6)
    evaluated(t, -1234.56, random=-2000.0, reference=-20.0)
    t.now = lambda: 0.0
    t.start_clock(0)
    text = line(t, capsys, 1_000_000, at=3600.0, note=note, warmup=10**6)
    assert len(text) <= 150, (len(text), text)


FULL_DISK_WRITER = """
import errno, sys
from pathlib import Path
from odmar_mpi.tensorboard import LiveLog

log = LiveLog(Path(sys.argv[1]), 0, frozenset())

def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

for writer in log.writers:  # the file under TensorBoard's writing thread fills up
    writer._get_file_writer().event_writer._async_writer._worker._record_writer.write = full
log.scalar(log.agent, "losses/value_loss", 1.0, 1)
log.flush()
log.scalar(log.agent, "losses/value_loss", 2.0, 2)
log.close()
print("training goes on")
"""


def test_a_full_disk_under_tensorboards_writing_thread_is_one_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "training goes on" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorBoard logs" in lines[0] and "No space left on device" in lines[0], done.stderr
