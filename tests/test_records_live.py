"""Records on disk while a run goes: every evaluation appends its rows to the rank's HDF5 file, which stays
readable during the run and after the process is killed, even in the middle of a write."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from odmar_mpi.records import Records, RecordsFile, read_records, records_path
from test_run_e2e import MPIEXEC, ROOT

TABLES = {"eval": ("step", "team_return", "share"), "episodes": ("step", "return")}

WRITER = """
import sys
from pathlib import Path
from odmar_mpi.records import Records, RecordsFile
records = Records({"eval": ("step", "team_return", "share"), "episodes": ("step", "return")})
file = RecordsFile(Path(sys.argv[1]), records, {"rank": 0})
print("open", flush=True)
step = 0
while True:  # until killed: rows of known values, appended one at a time
    step += 1
    records.append("eval", step=step, team_return=2.0 * step, share=0.5 * step)
    records.append("episodes", step=step, **{"return": -float(step)})
    file.append()
"""


def test_rows_appended_are_readable_while_the_file_is_open_and_a_resume_rewrites_from_the_checkpoint(tmp_path):
    path = tmp_path / "rank0000.h5"
    records = Records(TABLES)
    records.append("eval", step=0, team_return=-1.0, share=float("nan"))
    file = RecordsFile(path, records, {"rank": 0, "config": "x"})
    assert read_records(path)[0]["eval"]["step"].tolist() == [0.0]
    for step in (10, 20):
        records.append("eval", step=step, team_return=float(step), share=0.25)
    file.append()
    tables, attrs = read_records(path)  # the writer still holds the file open
    assert tables["eval"]["team_return"].tolist() == [-1.0, 10.0, 20.0] and attrs["config"] == "x"
    assert np.isnan(tables["eval"]["share"][0]) and tables["episodes"]["step"].size == 0
    file.close()
    # a resume restores the records of its checkpoint (here: the first two rows) and starts the file anew
    resumed = Records(TABLES)
    resumed.load_state_dict({"eval": np.array([[0.0, -1.0, np.nan], [10.0, 10.0, 0.25]]), "episodes": np.zeros((0, 2))})
    RecordsFile(path, resumed, {"rank": 0}).close()
    assert read_records(path)[0]["eval"]["step"].tolist() == [0.0, 10.0]


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.1])
def test_a_writer_killed_mid_append_leaves_a_readable_file_of_complete_rows(tmp_path, after_s):
    path = tmp_path / "rank0000.h5"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "open"
    time.sleep(after_s)  # thousands of appends per second: the kill lands in the middle of one
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    tables, _ = read_records(path)
    steps = tables["eval"]["step"]
    assert steps.size > 10  # it wrote for a while
    np.testing.assert_array_equal(steps, np.arange(1, steps.size + 1))  # every row read is complete, none missing
    np.testing.assert_array_equal(tables["eval"]["team_return"], 2.0 * steps)
    np.testing.assert_array_equal(tables["eval"]["share"], 0.5 * steps)
    episodes = tables["episodes"]["step"]
    np.testing.assert_array_equal(tables["episodes"]["return"], -episodes)
    assert abs(episodes.size - steps.size) <= 1  # the tables were appended one after the other


LIVE = ["run.algorithm=ippo", "run.warmup_steps=50", "run.train_steps=100000", "run.eval_every=50",
        "run.eval_episodes=1", "run.checkpoint_every=0", "env.world=simple_spread", "env.episode_length=25",
        "env.reward_sharing=local", "comm.topology=complete", "comm.algorithm=finite-time", "comm.rounds=0",
        "ppo.actor_hidden=16", "ppo.critic_hidden=16", "ppo.critic_heads=4", "ppo.rollout_steps=50",
        "ppo.minibatch_size=50"]


@pytest.mark.skipif(importlib.util.find_spec("mpe2") is None, reason="pip install mpe2")
def test_report_reads_a_run_that_is_still_going_and_after_it_was_killed(tmp_path):
    run_dir = tmp_path / "live"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "odmar_mpi.run", "--out", str(run_dir)]
    for item in LIVE:  # a long run with no checkpoints: only the records show progress
        command += ["--set", item]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        evaluations = 0
        while evaluations < 3:  # the random-policy evaluation and at least two more, while it runs
            assert job.poll() is None, job.stderr.read()
            assert time.monotonic() < deadline, "no evaluations recorded within 300 s"
            time.sleep(1)
            if all(records_path(run_dir, rank).exists() for rank in range(2)):
                evaluations = min(read_records(records_path(run_dir, rank))[0]["eval"]["step"].size for rank in range(2))
        live = subprocess.run([sys.executable, "-m", "odmar_mpi.report", str(run_dir), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert live.returncode == 0, live.stderr
        assert len(json.loads(live.stdout)["eval"]) >= 2
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # mpiexec and both ranks, mid-run, wherever they are
        job.wait(timeout=60)
    killed = subprocess.run([sys.executable, "-m", "odmar_mpi.report", str(run_dir), "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 0, killed.stderr
    summary = json.loads(killed.stdout)
    assert summary["steps"] >= 100 and summary["final_team_return"] is not None
