"""odmar_mpi.memory: the per-rank estimate follows the code's real allocations, and check_fits refuses what cannot fit."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from odmar_mpi.config import load_config
from odmar_mpi.memory import (F64, MemoryEstimate, available_memory, check_fits, estimate_from, estimate_memory,
                              format_memory, gp_parts, network_parameters, packed_size, replay_bytes)

GB = 10**9
NODE = 24 * GB


def estimate(*overrides: str, ranks: int = 8, degree: int = 2, **kw) -> MemoryEstimate:
    kw.setdefault("mmap_threshold", None)  # independent of the environment the tests run in
    return estimate_memory(load_config(None, list(overrides)), ranks, degree, **kw)


def gp_bytes(e: MemoryEstimate) -> int:
    return sum(part.bytes for part in e.parts if part.name.startswith(("GP ", "consensus")))


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


# ------------------------------------------------------------------------------------------- the arithmetic


def test_the_parts_add_up_to_the_total_and_the_node_adds_the_shared_pages_once():
    for e in (estimate(), estimate("run.algorithm=sac"), estimate("model.num_inducing=3000", degree=11)):
        assert e.total == sum(part.bytes for part in e.parts) > 0
        assert e.node_total(16) == 16 * e.total + e.shared
        assert all(part.bytes >= 0 and part.knob for part in e.parts)


def test_the_gp_part_grows_as_m_squared():
    sizes = {m: gp_bytes(estimate(f"model.num_inducing={m}")) for m in (1000, 2000, 4000)}
    assert 3.95 < sizes[2000] / sizes[1000] < 4.05 and 3.97 < sizes[4000] / sizes[2000] < 4.03
    # and exactly: J, chol(Kzz), chol(I + J), the triangle index pair, 2 packed copies and 5 consensus buffers
    m, p = 1000, packed_size(1000, 2)
    assert gp_bytes(estimate()) == (
        (m * m + 2 * m + 1024 * 6) * 8 + (2 * m * m + 4 * m + 2 * m) * 8 + 2 * (m * (m + 1) // 2) * 8 + 2 * p * 8
        + (3 + 2 + 1) * p * 8)


def test_each_neighbour_adds_one_packed_receive_buffer():
    ring, exponential = estimate(degree=2), estimate(degree=11)
    assert exponential.total - ring.total - (exponential.by_name.get("scalar gossip (step rewards, floods)", 0)
                                             - ring.by_name.get("scalar gossip (step rewards, floods)", 0)) \
        == 9 * packed_size(1000, 2) * F64


def test_the_replay_part_grows_linearly_with_the_buffer_size():
    sizes = [estimate(f"sac.buffer_size={n}") for n in (1_000_000, 2_000_000, 3_000_000)]
    name = "real replay buffer ({:,} rows)"
    replay = [e.by_name[name.format(n)] for e, n in zip(sizes, (1_000_000, 2_000_000, 3_000_000))]
    assert replay[1] - replay[0] == replay[2] - replay[1] == 1_000_000 * 32
    # the total too: the buffer, and its copy read back at a resume
    assert sizes[1].total - sizes[0].total == sizes[2].total - sizes[1].total == 2 * 1_000_000 * 32


def test_sac_has_no_gp_consensus_or_imagined_payload():
    e = estimate("run.algorithm=sac", "model.num_inducing=50000")
    assert gp_bytes(e) == 0 and not any("imagined" in part.name or "slack" in part.name for part in e.parts)
    assert e.total < estimate("run.algorithm=sac").total + 1  # M does not matter at all
    assert check_fits(e, 8, NODE) is None


def test_the_allocator_slack_follows_glibc_and_the_mmap_threshold():
    assert estimate("model.num_inducing=2000").by_name["allocator slack (heap kept after transients)"] == 2 * 2000**2 * 8
    assert not any("slack" in p.name for p in estimate("model.num_inducing=3000").parts)  # 72 MB blocks: mmapped
    assert not any("slack" in p.name for p in estimate(mmap_threshold=1 << 20).parts)


def test_an_absurd_size_is_arithmetic_not_an_allocation():
    e = estimate("model.num_inducing=200000", "sac.buffer_size=10000000000")
    assert e.total > 4e12  # 4 TB per rank, computed in microseconds


# ------------------------------------------------------------------------------------------- real allocations


def test_the_gp_parts_match_a_real_sparse_gp_byte_for_byte():
    from odmar_mpi.model.inducing import inducing_points
    from odmar_mpi.model.kernel import world_model_kernel
    from odmar_mpi.model.sparse_gp import SparseGP
    from odmar_mpi.model.statistics import _triangle

    m = 96
    inducing = inducing_points(m, [0.0, 0.0, -1.0, -1.0], [10.0, 10.0, 1.0, 1.0], seed=0)
    gp = SparseGP(inducing, world_model_kernel(2.0, 1.0, 0.1), noise_var=0.01, out_dim=2)
    rng = np.random.default_rng(0)
    x = np.hstack([rng.uniform(0, 10, (500, 2)), rng.uniform(-1, 1, (500, 2))])
    gp.observe(x, x[:, 2:])
    packed_input = gp.pack_statistics()
    summed_copy = packed_input.copy()  # what the learner keeps as the posterior's statistics
    gp.fit(summed_copy)
    expected = gp_parts(m)
    assert tensor_bytes(gp.J, gp.h, gp._pending_x, gp._pending_y) == expected["statistics"]
    assert tensor_bytes(gp.chol_kzz, gp.posterior.chol_precision, gp.inducing,
                        gp.posterior.whitened_mean) == expected["prior_posterior"]
    assert tensor_bytes(*_triangle(m, gp.device)) + packed_input.nbytes + summed_copy.nbytes == expected["packing"]


def test_the_consensus_part_matches_real_buffers():
    from mpi4py import MPI

    from odmar_mpi.comm.consensus import Consensus
    from odmar_mpi.comm.topology import build_graph
    from odmar_mpi.comm.weights import mixing_matrix

    graph = build_graph("ring", 1)  # a single rank: no neighbours, so 3 iterates + scratch
    m = 64
    consensus = Consensus(MPI.COMM_WORLD, graph, mixing_matrix(graph, "metropolis"), algorithm="plain", rounds=5,
                          tol=None, timeout_s=10, size=packed_size(m, 2))
    real = sum(b.nbytes for b in consensus.buffers) + consensus.scratch.nbytes + sum(
        b.nbytes for b in consensus.values.recv_buffers)
    cfg = load_config(None, [f"model.num_inducing={m}"])
    e = estimate_memory(cfg, 1, 0, mmap_threshold=None)
    assert e.by_name["consensus: 3 iterates + 0 receive + scratch"] == real


@pytest.mark.parametrize("rows", [1, 1000, 50_000])
def test_the_replay_part_matches_a_real_buffer(rows):
    from odmar_mpi.policy.replay import ReplayBuffer

    buffer = ReplayBuffer(rows, 2, 2, "cpu", seed=0)
    assert tensor_bytes(buffer.storage) + buffer.rows._stage.nbytes == replay_bytes(rows)
    e = estimate(f"sac.buffer_size={max(rows, 256)}")
    assert e.by_name[f"real replay buffer ({max(rows, 256):,} rows)"] == replay_bytes(max(rows, 256))


def test_the_network_part_matches_a_real_sac_after_an_update():
    from odmar_mpi.policy.replay import ReplayBuffer
    from odmar_mpi.policy.sac import SAC, SACConfig

    hidden = [32, 48, 24]
    sac = SAC(2, 2, SACConfig(hidden=hidden), "cpu", seed=0)
    buffer = ReplayBuffer(64, 2, 2, "cpu", seed=0)
    buffer.add_batch(torch.rand(64, 2), torch.rand(64, 2) * 2 - 1, torch.rand(64), torch.rand(64, 2), torch.zeros(64))
    sac.update(buffer.sample(16))
    actor, critic = network_parameters(tuple(hidden))
    assert sum(p.numel() for p in sac.actor.parameters()) == actor
    assert sum(p.numel() for p in sac.critic.parameters()) == critic
    params = [*sac.actor.parameters(), *sac.critic.parameters(), sac.log_alpha]
    real = (tensor_bytes(*params, *sac.critic_target.parameters(), *(p.grad for p in params))
            + sum(tensor_bytes(value) for state in sac.optimizer.state.values() for key, value in state.items()
                  if key != "step"))  # exp_avg, exp_avg_sq
    e = estimate(f"sac.hidden={hidden}")
    assert e.by_name["SAC networks, targets, gradients, Adam"] == real


def test_the_world_dimensions_are_the_reward_worlds():
    import env

    from odmar_mpi import memory

    assert (memory.OBS_DIM, memory.ACT_DIM) == (env.OBS_DIM, env.ACT_DIM)


def test_the_module_imports_neither_torch_nor_mpi():
    code = ("import sys, odmar_mpi.memory as m; "
            "assert not {'torch', 'mpi4py', 'h5py'} & set(sys.modules), sorted(sys.modules); print('pure')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "pure", done.stderr


# ------------------------------------------------------------------------------------------- the node


def test_check_fits_refuses_an_absurd_number_of_inducing_points_naming_the_knob():
    e = estimate("model.num_inducing=200000")
    message = check_fits(e, 8, NODE)
    assert message is not None and "\n" not in message
    assert "model.num_inducing = " in message and "(now 200000" in message and "32.0 TB per node" in message
    assert message.split("Turn down one of: ")[1].startswith("model.num_inducing = ")  # the first advice
    # the suggested M is the largest that fits
    suggested = int(message.split("model.num_inducing = ")[1].split(" ")[0])
    inputs = e.inputs
    assert estimate_from(dataclasses.replace(inputs, num_inducing=suggested)).node_total(8) <= NODE
    assert estimate_from(dataclasses.replace(inputs, num_inducing=suggested + 1)).node_total(8) > NODE


def test_check_fits_accepts_the_defaults_and_refuses_a_merely_large_m():
    assert check_fits(estimate(), 8, NODE) is None
    message = check_fits(estimate("model.num_inducing=8000", ranks=16), 16, NODE)
    assert message is not None and "model.num_inducing = 3" in message and "ranks per node (now 16" in message


def test_check_fits_names_the_replay_buffer_when_it_dominates():
    message = check_fits(estimate("sac.buffer_size=100000000"), 8, NODE)
    assert message is not None and "sac.buffer_size drives" in message
    assert message.split("Turn down one of: ")[1].startswith("sac.buffer_size = ")
    assert "model.num_inducing" not in message.split("Turn down")[1]  # M = 1000 alone would not be enough


def test_check_fits_suggests_fewer_ranks_per_node_when_each_rank_is_fine():
    e = estimate(ranks=64)
    message = check_fits(e, 64, NODE)
    fits = (NODE - e.shared) // e.total
    assert message is not None and f"at most {fits} ranks per node (now 64" in message
    assert check_fits(e, fits, NODE) is None and check_fits(e, fits + 1, NODE) is not None


def test_check_fits_says_when_nothing_fits():
    message = check_fits(estimate(ranks=1), 1, 200_000_000)
    assert message is not None and "use a larger node" in message


def test_format_memory_lists_every_part_the_total_and_the_node():
    e = estimate(ranks=16)
    text = format_memory(e, 16, NODE)
    for part in e.parts:
        assert part.name in text
    assert "total per rank" in text and "per node: 16 x " in text and "of 24.0 GB available" in text


def test_available_memory_is_plausible():
    total = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    available = available_memory()
    assert 0 < available <= (total or available)


@pytest.mark.parametrize("rows", [1, 50_000])
def test_the_sequence_replay_part_matches_a_real_buffer(rows):
    from odmar_mpi.memory import mamba_estimate
    from odmar_mpi.policy.sequences import SequenceBuffer

    cfg = load_config(None, ["run.algorithm=mamba", "env.world=simple_spread", f"mamba.buffer_size={rows}",
                             "world_model.n_categoricals=4", "world_model.deterministic=16"])
    buffer = SequenceBuffer(rows, 18, 2, 4, 16, seed=0)
    real = tensor_bytes(buffer.rows.storage) + buffer.rows._stage.nbytes
    assert mamba_estimate(cfg, 3, 2, obs_dim=18).by_name[f"sequence replay ({rows:,} steps)"] == real
