"""What a node measures about itself: time per phase, episode and evaluation returns, the records file
and the progress line. Nothing here feeds back into training.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from odmar_mpi.records import Records, RecordsFile, Tables, records_path

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


class Telemetry:
    """Records (the node's tables and the learner's), the phase clock, the running episode, the progress line."""

    def __init__(self, learner_tables: Tables, *, rank: int, optimal_team_return: float, attrs: dict[str, Any]) -> None:
        clash = set(learner_tables) & set(NODE_TABLES)
        if clash:
            raise ValueError(f"learner tables {sorted(clash)} clash with the node's; rename them.")
        self.records = Records({**NODE_TABLES, **learner_tables})
        self.clock = PhaseClock()
        self.rank = rank
        self.optimal_team_return = optimal_team_return
        self.attrs = attrs
        self.episode_return = 0.0
        self.episode_own_return = 0.0
        self.last_team_eval = float("nan")
        self.baselines: dict[str, float] = {}  # measured before training (the eval table's baseline columns)
        self.started = time.perf_counter()
        self.started_step = 0
        # seconds this process has waited for neighbours (the node sets it), and those of the run before a resume
        self.waited: Callable[[], float] = lambda: 0.0
        self.waited_before = 0.0
        self.file: RecordsFile | None = None

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
        self.started, self.started_step = time.perf_counter(), step

    def progress(self, step: int, warmup_steps: int, learner_note: str) -> None:
        """One line on rank 0 for the person at the terminal."""
        if self.rank != 0:
            return
        elapsed = time.perf_counter() - self.started
        rate = (step - self.started_step) / elapsed if elapsed > 0 else float("nan")
        phase = "warm-up" if step <= warmup_steps else "train"
        share = self.share(self.last_team_eval)
        optimum = f" ({share:6.1%} of optimum)" if np.isfinite(share) else ""
        note = f" | {learner_note}" if learner_note else ""
        print(f"step {step:>7d} [{phase}] | team eval return {self.last_team_eval:9.2f}{optimum} | "
              f"{rate:6.1f} steps/s{note}", flush=True)

    def open_records(self, run_dir: Path) -> None:
        """Start this rank's records file with the rows held now; later rows are appended by `save_records`."""
        if self.file is None:
            self.file = RecordsFile(records_path(run_dir, self.rank), self.records, self.attrs)

    def save_records(self) -> None:
        """Append the rows recorded since the last call to the records file."""
        if self.file is not None:
            self.file.append()

    def close_records(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

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
