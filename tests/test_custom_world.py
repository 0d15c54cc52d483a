"""A world of your own, from the command line (docs/worlds.md): `env.world = "module:factory"`.

- The example world (tests/custom_world_example.py, outside the package) trains with IPPO and with MAMBA through
  `mpiexec -n 2 python -m odmar_mpi.run --set env.world=custom_world_example:make_world` (tests/ on
  PYTHONPATH, a tiny config, 300 steps), and the run's records hold its evaluations and their baselines.
- `python -m odmar_mpi.check --ranks N --set env.world=...` accepts it, and refuses a broken world with exit
  status 2 and ONE line on stderr naming the problem: a module that does not import, a missing function, a factory
  that returns no ParallelEnv, an agent count other than the rank count (naming the right mpirun -n), Box actions,
  a world that fails PettingZoo's parallel_api_test. The broken worlds are the factories below.

These tests start their own processes (serial pass).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from custom_world_example import LineTargets

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
WORLD = "custom_world_example:make_world"
RANKS = 2
TINY = ["run.warmup_steps=100", "run.train_steps=200", "run.eval_every=100", "run.eval_episodes=2",
        "run.baseline_draws=2", "run.checkpoint_every=0", f"env.world={WORLD}", "env.episode_length=20",
        "env.reward_sharing=local", "comm.topology=complete", "comm.algorithm=finite-time", "comm.rounds=0",
        "world_model.deterministic=16", "world_model.n_categoricals=4", "world_model.n_classes=4",
        "world_model.hidden=16", "world_model.embed=16", "world_model.model_hidden=16", "world_model.head_hidden=16",
        "world_model.comm_heads=4", "world_model.horizon=5", "mamba.train_every=50", "mamba.batch_size=4",
        "mamba.sequence_length=10", "mamba.buffer_size=2000", "ppo.actor_hidden=16", "ppo.critic_hidden=16",
        "ppo.critic_heads=4", "ppo.minibatch_size=100", "ppo.rollout_steps=50"]


# --- broken worlds, each named by `env.world = "test_custom_world:<factory>"` -----------------------------------

def not_a_parallel_env(n_agents: int) -> object:
    """Returns a gymnasium (single-agent) env, not a PettingZoo ParallelEnv."""
    return gymnasium.make("CartPole-v1")


def three_agents() -> LineTargets:
    """Three agents whatever the job's rank count."""
    return LineTargets(3)


class BoxActions(LineTargets):
    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.box

    box = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)


def box_actions(n_agents: int) -> BoxActions:
    """Continuous actions: neither MAMBA nor IPPO can act in them."""
    return BoxActions(n_agents)


class NewSpaceEveryCall(LineTargets):
    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return gymnasium.spaces.Discrete(3)  # PettingZoo's API asks for the same object every call


def fails_the_api_test(n_agents: int) -> NewSpaceEveryCall:
    return NewSpaceEveryCall(n_agents)


# --- the command line -------------------------------------------------------------------------------------------

def environment() -> dict[str, str]:
    """This process's environment with tests/ on PYTHONPATH, where the worlds live."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *([path] if path else [])])}


def check(world: str, ranks: int, algorithm: str = "ippo") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odmar_mpi.check", "--ranks", str(ranks), "--set",
                           f"run.algorithm={algorithm}", "--set", f"env.world={world}"], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ranks, algorithm", [(2, "ippo"), (3, "mamba")])
def test_check_accepts_the_example_world(ranks: int, algorithm: str) -> None:
    result = check(WORLD, ranks, algorithm)
    assert result.returncode == 0, result.stderr
    assert f"valid for {ranks} ranks" in result.stdout and f'world = "{WORLD}"' in result.stdout


def test_checks_output_for_a_world_of_your_own_is_the_resolved_config_as_toml() -> None:
    """`check` prints the resolved config as TOML on stdout, also after running PettingZoo's API test on a world of
    your own (whose "Passed Parallel API test" line must not land there)."""
    result = check(WORLD, 2)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["env"]["world"] == WORLD, result.stdout[:200]


@pytest.mark.parametrize("world, says", [
    ("no_such_module_of_yours:make_world",
     r"cannot import no_such_module_of_yours \(ModuleNotFoundError: .*PYTHONPATH"),
    ("custom_world_example:make_wrold", r"has no function 'make_wrold'"),
    ("test_custom_world:not_a_parallel_env", r"not a PettingZoo ParallelEnv"),
    ("test_custom_world:three_agents", r"has 3 agents but the job has 2 ranks.*mpirun -n 3"),
    ("test_custom_world:box_actions", r"action space is Box\(.*Discrete"),
    ("test_custom_world:fails_the_api_test", r"fails PettingZoo's parallel_api_test: action_space should return the "
                                             r"exact same space object"),
])
def test_check_refuses_a_broken_world_in_one_line(world: str, says: str) -> None:
    result = check(world, 2)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("odmar_mpi.check: error: env.world = ") and world in lines[0], lines[0]
    assert re.search(says, lines[0]), lines[0]


@pytest.mark.parametrize("algorithm, table", [("ippo", "ppo"), ("mamba", "mamba")])
def test_the_example_world_trains_from_the_command_line(tmp_path: Path, algorithm: str, table: str) -> None:
    from odmar_mpi.records import read_records, records_path

    run_dir = tmp_path / algorithm
    command = [MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "odmar_mpi.run", "--out", str(run_dir)]
    for item in [*TINY, f"run.algorithm={algorithm}"]:
        command += ["--set", item]
    result = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(RANKS):
        tables, attrs = read_records(records_path(run_dir, rank))
        evaluations = tables["eval"]
        np.testing.assert_array_equal(evaluations["step"], [100, 200, 300])  # warm-up's end, then every 100
        assert np.isfinite(evaluations["team_return"]).all() and np.isfinite(evaluations["own_return"]).all()
        # both ends of the scale, measured once on the evaluations' episodes: random allowed actions, the reference
        assert (evaluations["random_team_return"] < evaluations["reference_team_return"]).all()
        assert evaluations["reference_team_return"][0] > 0.5 * RANKS * 20  # agent k walks to target k: near 1 a step
        assert len(tables[table]["step"]) >= 2 and np.isfinite(tables[table]["policy_loss"]).all()
        assert attrs["agents"] == RANKS


def test_the_docs_show_the_example_world_as_it_is() -> None:
    """docs/worlds.md includes tests/custom_world_example.py verbatim, so what a reader copies is what is tested."""
    code = (TESTS / "custom_world_example.py").read_text()
    assert f"```python\n{code}```" in (ROOT / "docs" / "worlds.md").read_text()
