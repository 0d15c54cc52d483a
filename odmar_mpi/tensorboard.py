"""Live TensorBoard logs: every rank writes event files as the run goes, so `tensorboard --logdir runs/` shows a
run while it trains. The HDF5 records (`odmar_mpi.records`) stay the source of truth: these files are a view of
the same rows, each written as it is appended (`Telemetry` hands them over) and flushed at every evaluation and
checkpoint, with the records file.

One folder per writing process (TensorBoard reads a folder's event files in name order and follows only the
newest, so two processes writing into one folder would hide each other's points):

    <run>/tensorboard/team/       rank 0: the team's curves
    <run>/tensorboard/agent_<r>/  rank r: its learner's tables (losses, statistics) and its own returns

TensorBoard shows each folder as a run, so a chart such as `losses/value_loss` overlays every agent of every run
under --logdir. Tags are CleanRL's and SB3's names where they have one (`charts/episodic_return`,
`losses/value_loss`, `losses/entropy`, `charts/SPS`, `eval/...`), the same for every algorithm that has the
quantity; a learner table's column without a name here is logged as `<table>/<column>`. Points are float32 (what
TensorBoard stores); non-finite values are left out (a missing point, not a NaN that poisons smoothing).

Resume: a run resumed from the checkpoint of step S opens new event files that begin with a restart marker at S
(SummaryWriter's `purge_step`). TensorBoard then drops every point the earlier processes wrote at steps >= S, as
the records file drops their rows, and the rows the checkpoint holds at step S are written again, so each tag
shows every step once, with the checkpoint's value. (TensorBoard's Rust loader ignores the marker and instead
replaces a tag's points from the step of each new point on; since a resume continues bit for bit, the points it
keeps in between are the values the resumed run writes again.)
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any

TEAM = "team"
SPS = "charts/SPS"
NORMALIZED = "eval/normalized_return"

TEAM_TAGS: dict[str, dict[str, str]] = {
    # team_return: the exact sum over agents; random/reference: the baselines measured on the same episodes
    "eval": {"team_return": "eval/episodic_return", "optimal_share": "eval/optimal_share",
             "random_team_return": "eval/random_return", "reference_team_return": "eval/reference_return"},
    # the return rank 0 learned from: the team's with env.reward_sharing = "team", its own with "local"
    "episodes": {"return": "charts/episodic_return"},
}
"""Rank 0's team curves, {table: {column: tag}}; also `NORMALIZED` (the share of the way from the random to the
reference policy's team return), `eval/<metric>` (win_rate, arrival_rate) and `SPS` (steps per second)."""

PPO_TAGS = {"policy_loss": "losses/policy_loss", "value_loss": "losses/value_loss", "entropy": "losses/entropy",
            "approx_kl": "losses/approx_kl", "clip_fraction": "losses/clipfrac", "returns_mean": "charts/returns_mean",
            "disagreement": "comm/disagreement", "parameter_bytes": "comm/parameter_bytes"}
AGENT_TAGS: dict[str, dict[str, str]] = {
    "eval": {"own_return": "eval/own_return"},
    "episodes": {"own_return": "charts/own_episodic_return"},
    "sac": {"critic_loss": "losses/qf_loss", "actor_loss": "losses/actor_loss", "alpha": "losses/alpha",
            "entropy": "losses/entropy", "q_mean": "losses/qf_values"},
    "model": {"consensus_rounds": "comm/consensus_rounds", "consensus_residual": "comm/consensus_residual",
              "holdout_rmse": "model/holdout_rmse", "bonus_mean": "model/bonus_mean", "std_mean": "model/std_mean",
              "imagined_reward_mean": "model/imagined_reward", "posterior_failed": "model/posterior_failed"},
    "model_eval": {"model_rmse": "model/eval_rmse"},
    "mamba": {**PPO_TAGS, "reconstruction": "losses/reconstruction_loss", "reward_loss": "losses/reward_loss",
              "discount_loss": "losses/discount_loss", "kl": "losses/kl_loss",
              "action_prediction": "losses/action_prediction_loss", "model_loss": "losses/model_loss",
              "imagined_reward": "model/imagined_reward", "real_reward": "charts/replay_reward",
              "message_bytes_per_step": "comm/message_bytes_per_step", "imagined_starts": "model/imagined_starts"},
    "ppo": {**PPO_TAGS, "entropy_coef": "charts/entropy_coef", "samples": "charts/rollout_samples"},
}
"""Each rank's own curves, {table: {column: tag}}. Node tables not named here (random_eval, timing) are not
logged: the random baseline is `eval/random_return`, and seconds per phase are the report's."""


def agent_name(rank: int) -> str:
    return f"agent_{rank}"


def log_dir(run_dir: Path, name: str) -> Path:
    """Where the writer `name` (TEAM or agent_name(rank)) of the run in `run_dir` keeps its event files."""
    return Path(run_dir) / "tensorboard" / name


def agent_tag(table: str, column: str, node_tables: frozenset[str]) -> str | None:
    """The tag of `column` of `table` in an agent's folder (None: not logged)."""
    if column == "step":
        return None
    named = AGENT_TAGS.get(table, {})
    if column in named or table in node_tables:
        return named.get(column)
    return f"{table}/{column}"


def normalized_return(team: float, random: float, reference: float) -> float:
    """The share of the way from the random to the reference policy's team return (NaN without both ends)."""
    span = reference - random
    return (team - random) / span if math.isfinite(span) and span != 0 else math.nan


class LiveLog:
    """This rank's TensorBoard writers: its agent's and, on rank 0, the team's. Creates the folders."""

    def __init__(self, run_dir: Path, rank: int, node_tables: frozenset[str], metric: str = "",
                 purge_step: int | None = None) -> None:
        """`metric`: the name of the mean of the world's episode metric (win_rate, arrival_rate, or ""); a resumed
        run passes `purge_step` = the step it resumed from (points at and after it are hidden, see the module)."""
        # imported here: about 0.4 s, paid only by the processes that write
        from torch.utils.tensorboard import SummaryWriter

        quiet_writer_thread_errors()

        self.rank, self.node_tables = rank, node_tables
        self.metric_tag = f"eval/{metric or 'success_rate'}"
        self.dirs = [log_dir(run_dir, agent_name(rank))] + ([log_dir(run_dir, TEAM)] if rank == 0 else [])
        self.writers: list[Any] | None = [SummaryWriter(str(path), purge_step=purge_step) for path in self.dirs]
        self.agent = self.writers[0]
        self.team = self.writers[1] if rank == 0 else None

    def row(self, table: str, row: dict[str, float]) -> None:
        """Log one row just appended to `table` ({column: value}, with "step")."""
        if self.writers is None:
            return
        step = int(row["step"])
        for column, value in row.items():
            tag = agent_tag(table, column, self.node_tables)
            if tag is not None:
                self.scalar(self.agent, tag, value, step)
        if self.team is None:
            return
        for column, tag in TEAM_TAGS.get(table, {}).items():
            self.scalar(self.team, tag, row[column], step)
        if table == "eval":
            self.scalar(self.team, NORMALIZED, normalized_return(row["team_return"], row["random_team_return"],
                                                                 row["reference_team_return"]), step)
            self.scalar(self.team, self.metric_tag, row["metric"], step)

    def steps_per_second(self, step: int, rate: float) -> None:
        """Rank 0: the training speed at an evaluation (wall-clock: the records do not hold it)."""
        if self.team is not None:
            self.scalar(self.team, SPS, rate, step)

    def scalar(self, writer: Any, tag: str, value: float, step: int) -> None:
        if self.writers is not None and math.isfinite(value):
            self.guarded(lambda: writer.add_scalar(tag, value, step))

    def flush(self) -> None:
        """Make every point written so far readable (TensorBoard picks them up on its next reload)."""
        for writer in self.writers or ():
            self.guarded(writer.flush)

    def close(self) -> None:
        for writer in self.writers or ():
            self.guarded(writer.close)
        self.writers = None

    def guarded(self, write: Any) -> None:
        """A failed write (disk full, quota) stops the live logs with one line; training and the records go on."""
        try:
            write()
        except OSError as err:
            print(f"odmar_mpi.run: warning: rank {self.rank}: TensorBoard logs in {self.dirs[0].parent} stopped "
                  f"({err.strerror or err}); the records file goes on.", file=sys.stderr, flush=True)
            self.writers = None


def quiet_writer_thread_errors() -> None:
    """TensorBoard writes from a thread of its own, which re-raises a failed write (a full disk) and so prints a
    traceback; the same error reaches the writer's next call in this thread, where `LiveLog.guarded` turns it into
    one line. So an OSError ending that thread is left unprinted; any other thread's error is printed as before."""
    if getattr(threading.excepthook, "quiet_writer_thread_errors", False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.quiet_writer_thread_errors = True  # type: ignore[attr-defined]
    threading.excepthook = hook
