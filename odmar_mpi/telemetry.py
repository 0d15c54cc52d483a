"""What a node measures about itself: time per phase, episode and evaluation returns, the records file, the
live TensorBoard logs (`odmar_mpi.tensorboard`) and the progress line. Nothing here feeds back into training.
"""

from __future__ import annotations

import math
import sys
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from odmar_mpi.records import Records, RecordsFile, Tables, records_path
from odmar_mpi.tensorboard import LiveLog, normalized_return

PHASES = ("act", "messages", "action_flood", "env", "step_gossip", "observe", "model", "consensus", "imagination",
          "updates", "averaging", "eval", "checkpoint")
"""The phases of the loop whose wall-clock time is recorded (cumulative seconds, table `timing`): choosing
actions; the learner's neighbour messages; the joint-action flood of coupled worlds; the world step; the
per-step reward gossip; handing transitions to the learner; world-model training; consensus on model
statistics (ODMAR); imagined rollouts; policy updates (SAC, PPO); weight averaging with the neighbours
(MAMBA, IPPO); evaluations (everything inside them); checkpoints and records. The phases partition the
time: a phase timed inside another is charged to the inner one, except inside `ABSORBING` phases."""
ABSORBING = ("eval", "checkpoint")
"""Phases charged with everything timed inside them (an evaluation's acting and stepping count as "eval")."""

NODE_TABLES: Tables = {
    # training episodes: the return the agent learned from (team or own) and its own share
    "episodes": ("step", "return", "own_return"),
    # evaluation: own mean return, the team's (exact sum over agents), its share of the optimum; on the same episodes
    # (every evaluation plays the same ones), the team's expected return with uniformly random allowed actions and
    # with the world's reference policy (coupled worlds), and the mean of the world's episode metric (win, arrival)
    # for the three (NaN where none)
    "eval": ("step", "own_return", "team_return", "optimal_share", "random_team_return", "reference_team_return",
             "metric", "random_metric", "reference_metric"),
    # the same evaluation of a uniformly random policy, once before training: the bottom of the scale
    "random_eval": ("step", "own_return", "team_return", "optimal_share"),
    # cumulative seconds per phase; "waiting": seconds spent waiting for neighbours, inside the communication phases
    "timing": ("step", *PHASES, "waiting"),
}


class PhaseClock:
    """Cumulative wall-clock seconds per phase of the loop; nested phases partition the time (see PHASES)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.open: list[str] = []  # the phases being timed, innermost last
        self.since = 0.0  # when the innermost open phase last started being charged

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.open and self.open[-1] in ABSORBING:
            yield
            return
        now = time.perf_counter()
        if self.open:
            self.seconds[self.open[-1]] += now - self.since
        self.open.append(phase)
        self.since = now
        try:
            yield
        finally:
            now = time.perf_counter()
            self.seconds[self.open.pop()] += now - self.since
            self.since = now


class ObservedRecords(Records):
    """Records that also hand every row appended to `observer(table, {column: value})`: the one place every row
    of the node and the learner passes through (the live logs watch it)."""

    def __init__(self, tables: Tables) -> None:
        super().__init__(tables)
        self.observer: Callable[[str, dict[str, float]], None] | None = None

    def append(self, table: str, **values: float) -> None:
        super().append(table, **values)
        if self.observer is not None:
            self.observer(table, dict(zip(self.tables[table], self.rows[table][-1])))


def duration(seconds: float) -> str:
    """Seconds as "45s", "3m12s", "2h05m" or "3d04h"."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def total_steps(attrs: dict[str, Any]) -> int | None:
    """warmup_steps + train_steps of the run's resolved config (attrs["config"], TOML); None without one."""
    if "config" not in attrs:
        return None
    run = tomllib.loads(attrs["config"]).get("run", {})
    return int(run["warmup_steps"]) + int(run["train_steps"]) if {"warmup_steps", "train_steps"} <= set(run) else None


class Telemetry:
    """Records (the node's tables and the learner's), the phase clock, the running episode, the live logs and the
    progress line."""

    def __init__(self, learner_tables: Tables, *, rank: int, optimal_team_return: float, attrs: dict[str, Any]) -> None:
        clash = set(learner_tables) & set(NODE_TABLES)
        if clash:
            raise ValueError(f"learner tables {sorted(clash)} clash with the node's; rename them.")
        self.records = ObservedRecords({**NODE_TABLES, **learner_tables})
        self.records.observer = self.row_appended
        self.clock = PhaseClock()
        self.rank = rank
        self.optimal_team_return = optimal_team_return
        self.attrs = attrs
        self.total_steps = total_steps(attrs)
        self.episode_return = 0.0
        self.episode_own_return = 0.0
        self.last_team_eval = float("nan")
        self.baselines: dict[str, float] = {}  # measured before training (the eval table's baseline columns)
        self.now: Callable[[], float] = time.perf_counter  # wall clock in seconds (tests set their own)
        self.started = self.now()
        self.started_step = 0
        self.last_line = (0, self.started)  # (step, time) of the previous progress line: the rate is measured since
        self.rate = math.nan  # steps per second between the last two progress lines
        # seconds this process has waited for neighbours (the node sets it), and those of the run before a resume
        self.waited: Callable[[], float] = lambda: 0.0
        self.waited_before = 0.0
        self.file: RecordsFile | None = None
        self.live: LiveLog | None = None

    def episode_step(self, step: int, reward: float, own_reward: float, episode_over: bool) -> None:
        """Account one completed transition; at an episode's end, record its returns."""
        self.episode_return += reward
        self.episode_own_return += own_reward
        if episode_over:
            self.records.append("episodes", step=step, own_return=self.episode_own_return,
                                **{"return": self.episode_return})
            self.episode_return = self.episode_own_return = 0.0

    def evaluation(self, step: int, own_return: float, team_return: float, metric: float) -> None:
        """Record an evaluation (the world's episode metric, NaN where it has none) with the baselines of its
        episodes."""
        self.last_team_eval = team_return
        self.records.append("eval", step=step, own_return=own_return, team_return=team_return,
                            optimal_share=self.share(team_return), metric=metric, **self.baselines)
        self.records.append("timing", step=step, **self.clock.seconds, waiting=self.waiting_s())
        if self.live is not None:
            elapsed = self.now() - self.started
            self.live.steps_per_second(step, (step - self.started_step) / elapsed if elapsed > 0 else math.nan)

    def waiting_s(self) -> float:
        """Seconds spent waiting for neighbours over the whole run (across resumes)."""
        return self.waited_before + self.waited()

    def baselines_measured(self, step: int, own_return: float, baselines: dict[str, float]) -> None:
        """The evaluations' baselines (random_team_return, random_metric, reference_team_return, reference_metric),
        measured before training; the random policy's team return also as the `random_eval` row."""
        self.baselines = baselines
        team = baselines["random_team_return"]
        self.records.append("random_eval", step=step, own_return=own_return, team_return=team,
                            optimal_share=self.share(team))

    def share(self, team_return: float) -> float:
        """The team return as a share of the world's optimum (NaN where the optimum is unknown)."""
        return team_return / self.optimal_team_return if self.optimal_team_return > 0 else float("nan")

    def start_clock(self, step: int) -> None:
        """The process starts (or resumes) training at `step`: rates are measured from here."""
        self.started, self.started_step = self.now(), step
        self.last_line = (step, self.started)

    def standing(self) -> str:
        """How well the team did at the last evaluation, in the best terms the world has: its share of the optimum,
        else its win or arrival rate, else its share of the way from random actions to the world's reference policy
        ("random->ref"); "" where there is none."""
        last = self.records.last  # NaN before the first evaluation
        share, metric = last("eval", "optimal_share"), last("eval", "metric")
        if math.isfinite(share):
            return f" ({share:6.1%} of optimum)"
        if math.isfinite(metric):
            return f" ({(self.attrs.get('metric') or 'success_rate').replace('_', ' ')} {metric:4.0%})"
        normalized = normalized_return(last("eval", "team_return"), last("eval", "random_team_return"),
                                       last("eval", "reference_team_return"))
        return f" ({normalized:6.1%} random->ref)" if math.isfinite(normalized) else ""

    def progress(self, step: int, warmup_steps: int, learner_note: str) -> None:
        """One line on rank 0 for the person at the terminal: the step, the last evaluation and how it stands, the
        speed since the previous line and the time left at that speed, the learner's key figures."""
        if self.rank != 0:
            return
        now = self.now()
        since_step, since = self.last_line
        if now > since and step > since_step:  # else a second line at the same step: keep the last rate
            self.rate, self.last_line = (step - since_step) / (now - since), (step, now)
        phase = "warm-up" if step <= warmup_steps else "train"
        eta = ""
        if self.total_steps is not None:
            left = max(self.total_steps - step, 0)
            eta = ", ETA " + (duration(left / self.rate) if self.rate > 0 else "0s" if left == 0 else "?")
        note = f" | {learner_note}" if learner_note else ""
        print(f"step {step:>7d} [{phase}] | team eval return {self.last_team_eval:8.2f}{self.standing()} | "
              f"{self.rate:5.4g} steps/s{eta}{note}", flush=True)

    def open_records(self, run_dir: Path) -> None:
        """Start this rank's records file with the rows held now (later rows are appended by `save_records`) and its
        live TensorBoard logs. A resumed run (started at a step > 0) hides the points its predecessor logged from
        that step on and logs the rows the checkpoint holds at that step again (see `odmar_mpi.tensorboard`)."""
        if self.file is None:
            self.file = RecordsFile(records_path(run_dir, self.rank), self.records, self.attrs)
        if self.live is None:
            resumed = self.started_step > 0
            try:
                self.live = LiveLog(run_dir, self.rank, frozenset(NODE_TABLES), self.attrs.get("metric", ""),
                                    purge_step=self.started_step if resumed else None)
            except ImportError as err:  # a venv installed before tensorboard was required
                if self.rank == 0:
                    print(f"odmar_mpi.run: warning: no live TensorBoard logs ({err}); pip install tensorboard. The "
                          "records file is written as usual.", file=sys.stderr, flush=True)
                return
            for table, columns in self.records.tables.items():
                step = columns.index("step")
                for row in self.records.rows[table]:
                    if row[step] >= self.started_step:
                        self.live.row(table, dict(zip(columns, row)))

    def row_appended(self, table: str, row: dict[str, float]) -> None:
        if self.live is not None:
            self.live.row(table, row)

    def save_records(self) -> None:
        """Append the rows recorded since the last call to the records file, and make the live logs readable."""
        if self.file is not None:
            self.file.append()
        if self.live is not None:
            self.live.flush()

    def close_records(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.live is not None:
            self.live.close()
            self.live = None

    def state_dict(self) -> dict[str, Any]:
        # The clock is wall-clock: the one part of a checkpoint that differs between identical runs.
        return {"records": self.records.state_dict(), "clock": {**self.clock.seconds, "waiting": self.waiting_s()},
                "episode_return": self.episode_return, "episode_own_return": self.episode_own_return,
                "last_team_eval": self.last_team_eval, "baselines": dict(self.baselines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records.load_state_dict(state["records"])
        clock = dict(state["clock"])
        self.waited_before = float(clock.pop("waiting")) - self.waited()
        self.clock.seconds.update(clock)
        self.episode_return = float(state["episode_return"])
        self.episode_own_return = float(state["episode_own_return"])
        self.last_team_eval = float(state["last_team_eval"])
        self.baselines = {name: float(value) for name, value in state["baselines"].items()}
