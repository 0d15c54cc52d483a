"""MAMBA and IPPO through the real entry point, `mpiexec -n 2 python -m odmar_mpi.run`, on a tiny config:
records, the report's keys, bit-identical resume. These tests start their own MPI jobs (serial pass)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from odmar_mpi.checkpoint import local_steps, verify_checkpoint
from odmar_mpi.records import read_records, records_path
from test_run_e2e import MPIEXEC, ROOT, assert_same_tree, learning_state

pytest.importorskip("mpe2")

RANKS = 2
TINY = ["run.algorithm=mamba", "run.warmup_steps=50", "run.train_steps=150", "run.eval_every=50",
        "run.eval_episodes=1", "run.checkpoint_every=100", "env.world=simple_spread", "env.episode_length=25",
        "env.reward_sharing=local", "comm.topology=complete", "comm.algorithm=finite-time", "comm.rounds=0",
        "world_model.deterministic=16", "world_model.n_categoricals=4", "world_model.n_classes=4",
        "world_model.hidden=16", "world_model.embed=16", "world_model.model_hidden=16", "world_model.head_hidden=16",
        "world_model.comm_heads=4", "world_model.horizon=5", "mamba.batch_size=4", "mamba.sequence_length=10",
        "mamba.buffer_size=2000", "ppo.actor_hidden=16", "ppo.critic_hidden=16", "ppo.critic_heads=4",
        "ppo.minibatch_size=100", "ppo.rollout_steps=50"]


def run_job(*args: str, overrides: list[str]) -> subprocess.CompletedProcess:
    command = [MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "odmar_mpi.run", *args]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mamba_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mamba") / "full"
    result = run_job("--out", str(run_dir), overrides=TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_mamba_trains_records_its_losses_disagreement_and_traffic(mamba_run):
    for rank in range(RANKS):
        tables, attrs = read_records(records_path(mamba_run, rank))
        rows = tables["mamba"]
        np.testing.assert_array_equal(rows["step"], [50, 75, 100, 125, 150, 175, 200])  # every 25 from warm-up's end
        for column in ("reconstruction", "reward_loss", "kl", "model_loss", "policy_loss", "imagined_reward"):
            assert np.isfinite(rows[column]).all(), column
        # each rank trains on its own data, so before every averaging the weights differ, by little
        assert ((rows["disagreement"] > 1e-4) & (rows["disagreement"] < 0.5)).all()
        # each message: action, 4 latent indices, h of 16, as float64, to the one neighbour
        assert (rows["message_bytes_per_step"] == 8 * (1 + 4 + 16)).all()
        np.testing.assert_array_equal(tables["eval"]["step"], [50, 100, 150, 200])
    # after the averaging of the last phase (step 200) every rank holds the exact mean (complete graph, uniform
    # weights), up to the float32 rounding of the float64 mean
    models = [learning_state(mamba_run, rank, 200)["learner"]["model"] for rank in range(RANKS)]
    for name, tensor in models[0].items():
        np.testing.assert_allclose(models[1][name].numpy(), tensor.numpy(), rtol=0, atol=1e-7, err_msg=name)


def test_report_json_names_algorithm_world_and_both_ends_of_the_scale(mamba_run):
    result = subprocess.run([sys.executable, "-m", "odmar_mpi.report", str(mamba_run), "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    summary = json.loads(result.stdout)
    assert (summary["algorithm"], summary["env"]) == ("mamba", "simple_spread")
    assert summary["final_team_return"] == summary["eval"][-1]["team_return"]
    assert summary["random_team_return"] is not None and summary["optimal_team_return"] is None


def test_mamba_resumes_bit_identically(mamba_run, tmp_path):
    part = tmp_path / "part"
    first = run_job("--out", str(part), overrides=[*TINY, "run.train_steps=50"])
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_job("--resume", str(part), overrides=["run.train_steps=150"])
    assert second.returncode == 0, second.stdout + second.stderr
    for rank in range(RANKS):
        assert_same_tree(learning_state(mamba_run, rank, 200), learning_state(part, rank, 200), f"rank {rank}")


def test_ippo_trains_on_real_data_through_the_same_node(tmp_path):
    run_dir = tmp_path / "ippo"
    result = run_job("--out", str(run_dir), overrides=[*TINY, "run.algorithm=ippo"])
    assert result.returncode == 0, result.stdout + result.stderr
    tables, _ = read_records(records_path(run_dir, 0))
    # every 50 steps after warm-up, on the policy's own actions only (warm-up's random ones are not on-policy)
    np.testing.assert_array_equal(tables["ppo"]["step"], [100, 150, 200])
    assert tables["ppo"]["samples"].tolist() == [50, 50, 50]
    assert np.isfinite(tables["ppo"]["policy_loss"]).all()


@pytest.mark.parametrize("algorithm, blow_up, quantity", [
    ("mamba", "world_model.lr=1e30", r"MAMBA's (world-model losses and gradient norm|actor and critic losses)"),
    ("ippo", "ppo.actor_lr=1e30", r"IPPO's losses"),
])
def test_a_non_finite_loss_stops_the_run_before_averaging_and_keeps_the_last_checkpoint(tmp_path, algorithm, blow_up,
                                                                                         quantity):
    """A learning rate of 1e30 sends the weights to ~1e30 in one Adam step: the next loss overflows. The run must
    stop at the first training phase (step 50 for MAMBA, 100 for IPPO), naming the rank, step and quantity, before
    the weights reach a neighbour, with the checkpoint of step 25 intact and none written after it."""
    run_dir = tmp_path / algorithm
    result = run_job("--out", str(run_dir), overrides=[*TINY, f"run.algorithm={algorithm}", blow_up,
                                                        "run.checkpoint_every=25", "mamba.model_updates=2"])
    assert result.returncode != 0
    stop = 50 if algorithm == "mamba" else 100
    assert re.search(rf"rank \d, step {stop}: {quantity} contain NaN or inf; the run stops here, before any averaging",
                     result.stderr), result.stderr
    for rank in range(RANKS):
        steps = local_steps(run_dir, rank)
        assert max(steps) == stop - 25, steps
        assert verify_checkpoint(run_dir, rank, stop - 25, RANKS) is None  # intact: checksums and shape verified


def test_bfloat16_precision_reaches_the_training_phases(mamba_run, tmp_path):
    """run.precision = "bfloat16": the first phase's losses (the same replayed batch from the same weights) differ
    from float32's by bfloat16's rounding only, everything stays finite and the weights stay float32."""
    run_dir = tmp_path / "bf16"
    result = run_job("--out", str(run_dir), overrides=[*TINY, "run.train_steps=50", "run.precision=bfloat16"])
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(RANKS):
        mixed = read_records(records_path(run_dir, rank))[0]["mamba"]
        full = read_records(records_path(mamba_run, rank))[0]["mamba"]
        for column in ("reconstruction", "reward_loss", "kl"):
            assert np.isfinite(mixed[column]).all(), column
            first, reference = mixed[column][0], full[column][0]
            assert first != reference, f"{column}: bit-equal to float32's, so the updates did not run in bfloat16"
            assert abs(first - reference) <= 0.05 * abs(reference) + 1e-3, (column, first, reference)
    model = learning_state(run_dir, 0, 100)["learner"]["model"]
    assert all(tensor.dtype == torch.float32 for tensor in model.values() if tensor.is_floating_point())
