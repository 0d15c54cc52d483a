"""Config loading, overrides and validation; `python -m odmar_mpi.check` as a user meets it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from odmar_mpi.check import main as check_main
from odmar_mpi.config import Config, ConfigError, config_from_dict, load_config, to_toml, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Ranks each shipped config is launched with: its world's agent count where the scenario fixes one.
RANKS = {"quick.toml": "4", "ippo_smax_3m.toml": "3", "mamba_smax_3m.toml": "3"}


def check(*args: str):
    return CliRunner().invoke(check_main, list(args))


def test_defaults_are_the_originals_setting():
    cfg = Config()
    assert (cfg.run.algorithm, cfg.model.beta, cfg.env.action_penalty) == ("odmar", 0.01, True)
    assert (cfg.comm.topology, cfg.comm.algorithm, cfg.comm.rounds) == ("ring", "plain", 100)
    assert (cfg.run.warmup_steps, cfg.run.train_steps, cfg.run.eval_every, cfg.run.eval_episodes) == (5000, 10000, 200, 5)
    assert (cfg.model.update_every, cfg.model.rollout_batch, cfg.model.rollout_length, cfg.model.num_inducing) == (250, 256, 2, 1000)
    assert (cfg.sac.updates_per_step, cfg.sac.real_ratio, cfg.sac.batch_size, cfg.sac.hidden) == (10, 0.0, 256, [256, 256])
    assert (cfg.sac.lr, cfg.sac.gamma, cfg.sac.tau, cfg.sac.target_entropy) == (3e-4, 0.99, 0.005, -2.0)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_accepted(path):
    result = check(str(path), "--ranks", RANKS.get(path.name, "5"))
    assert result.exit_code == 0, result.output
    # What it prints is the resolved config: the file's values over the defaults.
    resolved = result.stdout.split("\n", 1)[1]
    assert resolved.strip() == to_toml(load_config(path)).strip()


def test_paper_configs_differ_only_where_the_paper_does():
    beta = load_config(CONFIGS / "odmar_beta0.01.toml")
    no_beta = load_config(CONFIGS / "odmar_beta0.toml")
    sac = load_config(CONFIGS / "sac_nopenalty.toml")
    assert (beta.model.beta, no_beta.model.beta) == (0.01, 0.0)
    assert beta.sac == no_beta.sac and beta.comm == no_beta.comm
    # the original's network inputs, and an imagined buffer that keeps every model update of the run
    assert (beta.sac.obs_scale, beta.sac.init) == (1.0, "xavier")
    assert beta.model.imagined_keep * beta.model.update_every >= beta.run.train_steps
    assert (sac.run.algorithm, sac.sac.updates_per_step, sac.sac.real_ratio, sac.env.action_penalty) == ("sac", 1, 1.0, False)


def test_overrides_apply_in_order_with_toml_values_and_bare_words():
    cfg = load_config(None, ["comm.topology=torus", "sac.hidden=[64, 32]", "model.beta=0", "model.beta=0.5", "env.action_penalty=false"])
    assert cfg.comm.topology == "torus"
    assert cfg.sac.hidden == [64, 32]
    assert cfg.model.beta == 0.5 and isinstance(cfg.model.beta, float)
    assert cfg.env.action_penalty is False


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(None, ["run.seed=7", "comm.algorithm=finite-time", "sac.hidden=[8]"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.betta=0.1", "unknown config key model.betta. Did you mean 'beta'?"),
        ("modle.beta=0.1", "unknown config section [modle]. Did you mean 'model'?"),
        ("run.seed=\"zero\"", "run.seed = 'zero' has type str; expected int"),
        ("sac.updates_per_step=1.5", "sac.updates_per_step = 1.5 has type float; expected int"),
        ("env.action_penalty=1", "env.action_penalty = 1 has type int; expected bool"),
        ("sac.lr=-0.001", "sac.lr = -0.001 is out of range; allowed: > 0"),
        ("sac.batch_size=0", "sac.batch_size = 0 is out of range; allowed: >= 1"),
        ("model.rollout_length=0", "model.rollout_length = 0 is out of range; allowed: >= 1"),
        ("model.beta=-0.01", "model.beta = -0.01 is out of range; allowed: >= 0"),
        ("sac.gamma=1.0", "sac.gamma = 1.0 is out of range; allowed: >= 0 and < 1"),
        ("comm.algorithm=gossip", "comm.algorithm = 'gossip' is not allowed; choose one of plain, chebyshev, finite-time"),
        ("comm.topology=rnig", "comm.topology = 'rnig' is not allowed; choose one of ring, path, star"),
        ("comm.topology=rnig", "Did you mean 'ring'?"),
        ("sac.learning_rate=0.001", "unknown config key sac.learning_rate. Did you mean 'lr'?"),
        ("model.noise_var=inf", "model.noise_var = inf is not a finite number; allowed: > 0"),
        ("model.beta=nan", "model.beta = nan is not a finite number"),
        ("sac.hidden=[64, 0]", "sac.hidden = [64, 0] is out of range; allowed: >= 1"),
        ("comm.tol=1e-20", "comm.tol = 1e-20 is out of range; allowed: 0 (off) or >= 1e-14 and < 1"),
        ("comm.rounds=70000", "comm.rounds = 70000 is out of range; allowed: >= 0 and <= 65535"),
        ("sac.hidden=[]", "sac.hidden = []"),
    ],
)
def test_bad_values_are_refused_with_the_key_the_value_and_what_is_allowed(override, expected):
    result = check("--ranks", "4", "--set", override)
    assert result.exit_code == 2
    assert expected in result.output


def test_an_unknown_top_level_key_is_named_as_a_key_with_its_section():
    result = check("--set", "seed=3")
    assert result.exit_code == 2 and "expected section.key=value" in result.output
    with pytest.raises(ConfigError, match=r"unknown top-level key 'beta' = 0.1: every setting belongs to a section.*"
                                          r"Did you mean model.beta\?"):
        config_from_dict({"beta": 0.1})


def test_malformed_override_explains_the_syntax():
    result = check("--set", "beta0.1")
    assert result.exit_code == 2
    assert "expected section.key=value" in result.output


def test_missing_and_invalid_files_are_named(tmp_path):
    result = check(str(tmp_path / "nope.toml"))
    assert result.exit_code == 2 and "nope.toml' does not exist" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nseed = 1\n")
    result = check(str(bad))
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_rank_count_must_fit_the_topology():
    result = check("--ranks", "6", "--set", "comm.topology=hypercube")
    assert result.exit_code == 2
    assert 'with 6 ranks: comm.topology = "hypercube": a hypercube needs a power-of-two rank count' in result.output
    assert check("--ranks", "8", "--set", "comm.topology=hypercube").exit_code == 0


def test_edge_lists_must_exist_be_connected_and_name_real_ranks(tmp_path):
    missing = check("--ranks", "4", "--set", "comm.topology=edges", "--set", f'comm.edges_file="{tmp_path / "none.txt"}"')
    assert missing.exit_code == 2 and "does not exist" in missing.output
    disconnected = tmp_path / "split.txt"
    disconnected.write_text("0 1\n2 3\n")
    result = check("--ranks", "4", "--set", "comm.topology=edges", "--set", f'comm.edges_file="{disconnected}"')
    assert result.exit_code == 2 and "connected" in result.output
    outside = tmp_path / "outside.txt"
    outside.write_text("0 1\n1 2\n2 3\n3 7\n")
    result = check("--ranks", "4", "--set", "comm.topology=edges", "--set", f'comm.edges_file="{outside}"')
    assert result.exit_code == 2 and "7" in result.output
    good = tmp_path / "good.txt"
    good.write_text("0 1\n1 2\n2 3\n")
    assert check("--ranks", "4", "--set", "comm.topology=edges", "--set", f'comm.edges_file="{good}"').exit_code == 0


def test_finite_time_needs_no_rounds_but_plain_does():
    cfg = load_config(None, ["comm.algorithm=finite-time", "comm.rounds=0"])
    validate(cfg, ranks=4)
    with pytest.raises(ConfigError, match="needs comm.rounds > 0 or comm.tol > 0"):
        validate(load_config(None, ["comm.rounds=0"]), ranks=4)


def test_a_warmup_shorter_than_the_graph_diameter_is_refused_and_a_large_rollout_batch_is_not():
    # Start states are drawn with replacement: 256 rollouts from 100 warm-up steps are fine.
    validate(load_config(None, ["run.warmup_steps=100"]), ranks=2)
    validate(load_config(None, ["run.warmup_steps=4"]), ranks=8)  # ring of 8: diameter 4
    with pytest.raises(ConfigError, match="run.warmup_steps = 3 leaves the real buffer empty .* diameter 4 with 8 ranks"):
        validate(load_config(None, ["run.warmup_steps=3"]), ranks=8)
    validate(load_config(None, ["run.warmup_steps=3", "model.uniform_starts=1"]), ranks=8)


def test_check_prints_the_memory_estimate_and_refuses_what_cannot_fit_naming_the_knob():
    fits = check("--ranks", "5", "--node-memory", "64")
    assert fits.exit_code == 0 and "memory per rank (estimate" in fits.stderr and "total per rank" in fits.stderr
    absurd = check("--ranks", "5", "--node-memory", "64", "--set", "model.num_inducing=200000")
    assert absurd.exit_code == 2
    assert "model.num_inducing = " in absurd.stderr and "or less (now 200000; memory grows as M^2)" in absurd.stderr
    crowded = check("--ranks", "64", "--node-memory", "4")
    assert crowded.exit_code == 2 and "ranks per node" in crowded.stderr


def test_coupled_world_refusals_name_the_package_the_rank_count_and_the_action_kind(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mpe2" else real_find_spec(name, *a))
    missing = check("--ranks", "3", "--set", "run.algorithm=mamba", "--set", "env.world=simple_spread")
    assert missing.exit_code == 2
    assert "env.world = 'simple_spread' needs the package 'mpe2', which is not installed: pip install mpe2" in missing.stderr
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    agents = check("--ranks", "3", "--set", "env.n_agents=5")
    assert agents.exit_code == 2 and "launch 5 ranks (mpirun -n 5)" in agents.stderr
    discrete_on_continuous = check("--ranks", "3", "--set", "run.algorithm=mamba")
    assert discrete_on_continuous.exit_code == 2
    assert ("run.algorithm = 'mamba' acts with discrete actions but env.world = 'reward-collection' takes continuous "
            "ones; choose run.algorithm from odmar, sac for this world, or a world with discrete actions: "
            "env.world = 'simple_spread', 'smax', 'flatland'.") in discrete_on_continuous.stderr
    continuous_on_discrete = check("--ranks", "3", "--set", "env.world=simple_spread")
    assert continuous_on_discrete.exit_code == 2
    assert ("choose run.algorithm from mamba, ippo for this world, or env.world = 'reward-collection'."
            in continuous_on_discrete.stderr)


def test_check_refuses_cuda_where_there_is_none():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the refusal cannot happen here")
    result = check("--ranks", "3", "--set", "run.device=cuda")
    assert result.exit_code == 2 and 'run.device = "cuda" but this machine has no CUDA device' in result.stderr
