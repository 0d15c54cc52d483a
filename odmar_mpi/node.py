"""One agent = one MPI rank: wires its world copy, its learner, the gossip and the telemetry.

`Node.train` is the loop of docs/architecture.md, read top to bottom: act, step the own world copy,
push the step's reward (and stop flag) into the per-step gossip, hand the learner each transition
once its team reward is complete, then the learner's periodic model step, its updates, evaluation
and checkpoints. Everything that learns lives in the learner (`odmar_mpi.learners`); everything the
ranks say to each other goes through `odmar_mpi.comm`.
"""

from __future__ import annotations

import math
import random
import sys
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from odmar_mpi import __version__
from odmar_mpi.checkpoint import (CheckpointError, load_checkpoint, loadable_steps, remove_temporaries,
                                  save_checkpoint)
from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.comm.exchange import NeighbourExchange
from odmar_mpi.comm.flood import Flood
from odmar_mpi.comm.step_gossip import StepGossip
from odmar_mpi.comm.topology import Graph
from odmar_mpi.comm.weights import mixing_matrix
from odmar_mpi.config import Config, to_toml
from odmar_mpi.device import local_rank, select_device, training_precision
from odmar_mpi.learners import learner_class
from odmar_mpi.learners.base import LearnerContext, Transition
from odmar_mpi.streams import stream_seed
from odmar_mpi.telemetry import Telemetry
from odmar_mpi.worlds import make_world, world_optimum

STEP_VALUES = ("own_reward", "stop")
"""What every rank pushes into the per-step gossip, in this order."""
OWN_REWARD, STOP = range(len(STEP_VALUES))
BASELINE_SUMS = ("random_team_return", "random_metric", "reference_team_return", "reference_metric")
"""The sums `CoupledWorldCopy.baselines` gives, in its order."""


class PendingSteps:
    """Steps taken but not yet complete: their team reward arrives `StepGossip.delay` steps later. Each holds the
    own agent's transition (None while the agent is out of an episode the others go on with), its own reward and
    whether the world's episode ended with it."""

    def __init__(self) -> None:
        self.steps: deque[tuple[Transition | None, float, bool]] = deque()

    def add(self, transition: Transition | None, own_reward: float, episode_over: bool) -> None:
        self.steps.append((transition, own_reward, episode_over))

    def complete(self, reward: float) -> tuple[Transition | None, float, bool]:
        """The oldest pending step, its transition's learning reward filled in."""
        transition, own_reward, over = self.steps.popleft()
        return (None if transition is None else replace(transition, reward=reward)), own_reward, over

    def state_dict(self) -> dict[str, Any]:
        empty = np.zeros(0)
        return {"steps": [[empty, empty, empty, empty, [0.0, 0.0, own, float(over), 0.0]] if t is None else
                          [t.obs, t.action, t.next_obs, empty if t.available is None else t.available,
                           [float(t.terminated), float(t.truncated), own, float(over), 1.0]]
                          for t, own, over in self.steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = deque(
            ((Transition(np.asarray(obs), np.asarray(action), math.nan, np.asarray(next_obs), bool(flags[0]),
                         bool(flags[1]), np.asarray(available) if len(available) else None) if flags[4] else None),
             float(flags[2]), bool(flags[3]))
            for obs, action, next_obs, available, flags in state["steps"])


class Node:
    """One agent. Every rank constructs one with the same config and graph; construction is collective."""

    def __init__(self, cfg: Config, comm: MPI.Comm, graph: Graph, run_dir: Path) -> None:
        self.cfg = cfg
        self.rank = comm.Get_rank()
        self.n_agents = comm.Get_size()
        self.run_dir = Path(run_dir)
        torch.set_num_threads(cfg.run.torch_threads)
        # Our streams use their own generators; the global ones are seeded too, so nothing depends on process entropy.
        torch.manual_seed(self.seed("torch_global"))
        random.seed(self.seed("python_global"))
        self.device = select_device(cfg.run.device, local_rank(comm))

        timeout = cfg.comm.timeout_s
        self.gossip = VectorGossip(comm, graph, mixing_matrix(graph, cfg.comm.weights), algorithm=cfg.comm.algorithm,
                                   rounds=cfg.comm.rounds or None, tol=cfg.comm.tol or None, timeout_s=timeout)
        self.flood = Flood(comm, graph, timeout_s=timeout)
        self.step_gossip = StepGossip(comm, graph, width=len(STEP_VALUES), timeout_s=timeout)

        self.world = make_world(cfg, self.rank, self.n_agents)
        self.eval_world = make_world(cfg, self.rank, self.n_agents)
        coupled = self.world.coupled
        # A coupled world steps every agent, so every step every copy needs everyone's action; a third copy plays
        # the evaluations' baselines (random actions, the reference policy) on their episodes, with no messages.
        learner = learner_class(cfg.run.algorithm)
        self.action_flood = None
        self.baseline_world = make_world(cfg, self.rank, self.n_agents) if coupled else None
        self.eval_flood = Flood(comm, graph, width=len(BASELINE_SUMS), timeout_s=timeout, name="baselines")
        self.telemetry = Telemetry(learner.tables, rank=self.rank,
                                   optimal_team_return=world_optimum(cfg, self.n_agents), attrs={
            "config": to_toml(cfg), "version": __version__, "rank": self.rank, "agents": self.n_agents,
            "device": str(self.device), "metric": self.world.metric if coupled else ""})
        self.learner = learner(LearnerContext(cfg=cfg, world=self.world, rank=self.rank, n_agents=self.n_agents,
                                              graph=graph, device=self.device, seed=self.seed, records=self.telemetry.records,
                                              clock=self.telemetry.clock))
        message_size = self.learner.message_size
        if coupled:  # the learner's neighbour messages ride the joint action's flood: one message per neighbour
            self.action_flood = Flood(comm, graph, width=self.world.action_width, timeout_s=timeout,
                                      name="joint action and messages", payload=message_size)
        self.messages = (NeighbourExchange(comm, graph.neighbours[self.rank], message_size, timeout,
                                           name="neighbour messages") if message_size and not coupled else None)
        self.telemetry.waited = self.waited_s
        self.message_calls = 0
        self.pending = PendingSteps()
        self.step = 0
        self.obs = self.world.reset()
        self.learner.begin_episode("explore")
        self.stop_requested = False

    def seed(self, stream: str) -> int:
        return stream_seed(self.cfg.run.seed, self.rank, stream)

    # ------------------------------------------------------------------ the loop

    def train(self) -> bool:
        """Run until warmup_steps + train_steps environment steps, checkpointing on the way.

        Returns False when a stop was requested (SIGTERM/SIGUSR1 on any rank): the flag rides the
        per-step gossip, so every rank learns of it at the same step, finishes that step, checkpoints
        and returns, and a resumed run continues exactly as an uninterrupted one would.
        """
        run, clock = self.cfg.run, self.telemetry.clock
        warmup, total = run.warmup_steps, self.cfg.total_steps
        learner = self.learner
        self.telemetry.start_clock(self.step)
        self.telemetry.open_records(self.run_dir)
        if self.step == 0:
            self.evaluate_baselines()
        while self.step < total:
            mode = "explore" if self.step >= warmup else "warmup"
            transition, own_reward, over = self.play_step(self.world, self.obs, mode)
            self.pending.add(None if transition is None else replace(transition, reward=math.nan), own_reward, over)
            self.obs = self.start_episode(self.world, "explore") if over else transition.next_obs if transition else self.obs
            self.step += 1
            with clock("step_gossip"):
                table = self.step_gossip.push((own_reward, float(self.stop_requested)))
            stop = table is not None and self.complete_step(table)

            if self.step >= warmup and learner.model_every and self.step % learner.model_every == 0:
                with self.precision():
                    learner.model_step(self.step, self.gossip)
            if self.step > warmup:
                with clock("updates"), self.precision():
                    learner.update(self.step)
            if self.step >= warmup and (self.step - warmup) % run.eval_every == 0:
                self.evaluate()
            if run.progress_every and self.step % run.progress_every == 0:
                self.progress()
            checkpointed = bool(run.checkpoint_every) and self.step % run.checkpoint_every == 0
            if checkpointed or stop:
                self.checkpoint()
            if stop:
                return False
        if not (run.checkpoint_every and self.step % run.checkpoint_every == 0):  # not written just above
            self.checkpoint()
        self.record_last_steps()
        return True

    def play_step(self, world: Any, obs: np.ndarray, mode: str) -> tuple[Transition | None, float, bool]:
        """One step of `world` (the training or the eval copy): the learner acts while its agent is in the episode;
        once the agent has left (a dead unit, an arrived train) the rank goes on stepping its copy with the others'
        actions until the episode ends for all. Returns (the agent's transition with its own reward, or None while
        it is out; its own reward; whether the episode ended). Every rank calls it at the same step."""
        active = world.active
        available = world.available_actions() if active else None
        if active:
            with self.telemetry.clock("act"):
                action = self.learner.act(obs, mode, available)
        else:
            action = world.idle_action
        next_obs, reward, terminated, truncated = self.step_world(world, action, mode)
        over = world.episode_over
        if not active:
            return None, reward, over
        if (terminated or truncated) and not over:
            self.learner.leave(mode)
        return Transition(obs, action, reward, next_obs, terminated, truncated, available), reward, over

    def step_world(self, world: Any, action: np.ndarray, mode: str) -> tuple[np.ndarray, float, bool, bool]:
        """Exchange what this step needs with the other ranks, then step `world` (the training or the eval copy).

        The learner's message (if it has one) goes to the neighbours, theirs come back; a coupled world
        needs every rank's action, which a flood brings, the messages riding its first round. Every rank calls
        it at the same step.
        """
        clock = self.telemetry.clock
        joint = None
        if self.action_flood is not None:
            with clock("messages"):
                message = self.learner.message(mode) if self.learner.message_size else None
            with clock("action_flood"):
                joint = self.action_flood.gather(action, message)
            if message is not None:
                with clock("messages"):
                    self.learner.receive(mode, self.action_flood.payloads)
        elif self.messages is not None:
            with clock("messages"):
                self.message_calls += 1
                received = self.messages.exchange(self.learner.message(mode), call=self.message_calls, round=1)
                self.learner.receive(mode, received)
        with clock("env"):
            return world.step(action, joint)

    def start_episode(self, world: Any, mode: str) -> np.ndarray:
        """Reset `world`; the learner's recurrent state of `mode` starts over. Returns the first observation."""
        obs = world.reset()
        self.learner.begin_episode(mode)
        return obs

    def complete_step(self, table: np.ndarray, learn: bool = True) -> bool:
        """The oldest pending step is complete on every rank (`table`: row r = rank r's STEP_VALUES): hand its
        transition to the learner and the telemetry. Returns whether any rank asked to stop at that step."""
        own = table[:, OWN_REWARD]
        team = math.fsum(own.tolist())  # exact, so bit-identical on every rank
        reward = team if self.cfg.env.reward_sharing == "team" else float(own[self.rank])
        transition, own_reward, over = self.pending.complete(self.cfg.env.reward_scale * reward)
        if learn and transition is not None:
            with self.telemetry.clock("observe"):
                self.learner.observe(transition)
        self.telemetry.episode_step(self.step, reward, own_reward, over)
        return bool(table[:, STOP].max() > 0)

    def record_last_steps(self) -> None:
        """After the final checkpoint: complete the steps still in the pipeline for the records only (the
        checkpoint keeps them pending, so a run extended by --resume goes on exactly as one run would)."""
        while self.pending.steps:
            table = self.step_gossip.push((0.0, 0.0))
            if table is not None:
                self.complete_step(table, learn=False)
        self.telemetry.close_records()

    def request_stop(self, *_: object) -> None:
        """Signal handler: only sets a flag; it reaches every rank through the per-step gossip."""
        self.stop_requested = True

    def evaluate(self) -> None:
        """Episodes of the learner on the own eval copy of the world, the same `run.eval_episodes` episodes every
        time (on coupled worlds the copy replays their reset seeds), so evaluations compare like with like and the
        baselines measured on them before training hold for all; the team return is the exact sum over agents,
        the metric (win, arrival) the same on every copy."""
        with self.telemetry.clock("eval"):
            if self.world.coupled:
                self.eval_world.episode = 0
            own, transitions, metric = self.run_episodes("evaluate")
            self.learner.evaluated(self.step, transitions)
            team = self.flood.sum(own)
        self.telemetry.evaluation(self.step, own, team, metric)
        self.telemetry.save_records()
        if not self.cfg.run.progress_every:
            self.progress()

    def precision(self) -> AbstractContextManager:
        """The arithmetic of the learner's updates (`run.precision`)."""
        return training_precision(self.cfg.run.precision, self.device)

    def evaluate_baselines(self) -> None:
        """Once before training, the bottom and top of the scale on the evaluations' episodes. Coupled worlds: the
        team with uniformly random allowed actions (`run.baseline_draws` plays of each episode) and with the
        world's reference policy, played on the baseline copy, the plays shared out over the ranks and summed in
        one flood (no messages: every copy can act for the whole team). The reward-collection world, whose
        episodes all start alike: random actions through the learner, no reference (its optimum is known).
        Collective."""
        with self.telemetry.clock("eval"):
            if self.baseline_world is None:
                own = self.run_episodes("random")[0]
                baselines = dict.fromkeys(BASELINE_SUMS, math.nan) | {"random_team_return": self.flood.sum(own)}
            else:
                own, episodes, draws = math.nan, range(self.cfg.run.eval_episodes), self.cfg.run.baseline_draws
                share = self.baseline_world.baselines(episodes, draws, self.rank, self.n_agents)
                table = self.eval_flood.gather(share)  # the same table, bit for bit, on every rank
                plays = {"random": draws * len(episodes), "reference": len(episodes)}
                baselines = {name: float(total) / plays[name.split("_")[0]]
                             for name, total in zip(BASELINE_SUMS, table.sum(0))}
        self.telemetry.baselines_measured(self.step, own, baselines)
        self.telemetry.save_records()

    def run_episodes(self, mode: str) -> tuple[float, list[Transition], float]:
        """`run.eval_episodes` episodes of the learner acting in `mode` on the eval copy: (mean own return,
        transitions, mean of the world's episode metric or NaN).

        Collective on coupled worlds or with learner messages: every rank runs its episodes in step.
        """
        returns, transitions, metrics = [], [], []
        world = self.eval_world
        for _ in range(self.cfg.run.eval_episodes):
            obs, total, over = self.start_episode(world, mode), 0.0, False
            while not over:
                transition, reward, over = self.play_step(world, obs, mode)
                if transition is not None:
                    transitions.append(transition)
                    obs = transition.next_obs
                total += reward
            returns.append(total)
            if world.coupled and world.metric_key:
                metrics.append(world.env.episode_metrics()[world.metric_key])
        return float(np.mean(returns)), transitions, float(np.mean(metrics)) if metrics else math.nan

    def progress(self) -> None:
        self.telemetry.progress(self.step, self.cfg.run.warmup_steps, self.learner.progress_note())

    # ------------------------------------------------------------------ state

    def parts(self) -> dict[str, Any]:
        """Everything with state, by name: a checkpoint is their states composed."""
        return {"world": self.world, "eval_world": self.eval_world, "pending": self.pending,
                "step_gossip": self.step_gossip, "learner": self.learner, "telemetry": self.telemetry}

    def state_dict(self) -> dict[str, Any]:
        state = {name: part.state_dict() for name, part in self.parts().items()}
        state["node"] = {"step": self.step, "obs": self.obs.copy(), "message_calls": self.message_calls,
                         "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            part.load_state_dict(state[name])
        # A stop request belongs to the processes that received it and was honoured by their checkpoint; flags
        # of ranks signalled a step later are still in flight there and would stop the resumed run at once.
        self.step_gossip.clear(STOP)
        node = state["node"]
        self.step = int(node["step"])
        self.obs = np.asarray(node["obs"])
        self.message_calls = int(node["message_calls"])
        torch.set_rng_state(node["torch_rng"])
        version, internal, gauss = node["python_rng"]
        random.setstate((version, tuple(internal), gauss))

    def waited_s(self) -> float:
        """Seconds this process has spent waiting for neighbours, over all its exchanges."""
        return sum(part.waited_s for part in (self.gossip, self.flood, self.eval_flood, self.step_gossip,
                                              self.action_flood, self.messages) if part is not None)

    def free(self) -> None:
        """Close the records file and release the communicators; every rank calls it."""
        self.telemetry.close_records()
        for part in (self.gossip, self.flood, self.eval_flood, self.step_gossip, self.action_flood, self.messages):
            if part is not None:
                part.free()

    def checkpoint(self) -> None:
        with self.telemetry.clock("checkpoint"):
            save_checkpoint(self.run_dir, self.rank, self.step, self.state_dict(), keep=self.cfg.run.keep_checkpoints,
                            ranks=self.n_agents)
            self.telemetry.save_records()

    def resume(self, flood: Flood) -> int:
        """Load the newest checkpoint step that every rank has and can load (checksums verified), falling back
        to an older common step when a newer file is damaged or missing on some rank. Collective.

        Returns the step; raises CheckpointError (the same on every rank) when there is none.
        """
        for path in remove_temporaries(self.run_dir, self.rank):
            print(f"odmar_mpi.run: rank {self.rank}: removed {path}, left by an interrupted write", flush=True)
        good, rejected = loadable_steps(self.run_dir, self.rank, ranks=self.n_agents)
        for reason in rejected:  # each names this rank's own file: one line per damaged file
            print(f"odmar_mpi.run: warning: {reason}", file=sys.stderr, flush=True)
        newest = int(flood.maximum(float(max(good, default=-1))))
        step = agree_on_step(flood, good)
        if step is None:
            without = ", ".join(map(str, np.flatnonzero(flood.gather(float(len(good)))[:, 0] == 0)))
            raise CheckpointError(f"cannot resume {self.run_dir}: no checkpoint step that every rank can load"
                                  f"{f' (rank(s) {without} have none)' if without else ''}; see the warnings above, "
                                  "or start a new run with --out.")
        state = load_checkpoint(self.run_dir, self.rank, step, ranks=self.n_agents)
        try:
            self.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as err:  # a part whose state has another shape or keys
            raise CheckpointError(f"rank {self.rank}: the checkpoint of step {step} in {self.run_dir} does not fit this "
                                  f"version of odmar_mpi ({__version__}) and config ({type(err).__name__}: {err}); "
                                  "resume with the version that wrote it, or start a new run with --out.") from None
        if self.rank == 0 and step != newest:
            print(f"odmar_mpi.run: warning: the newest checkpoint (step {newest}) is missing or damaged on some rank; "
                  f"resuming from step {step}, the newest step every rank can load.", file=sys.stderr, flush=True)
        return step


def agree_on_step(flood: Flood, steps: list[int]) -> int | None:
    """The largest step in every rank's `steps`, the same on every rank (None if there is none). Collective.

    Each candidate is the smallest over ranks of their largest step below the previous candidate, so no
    common step is ever skipped; each check costs two floods.
    """
    candidate = int(flood.minimum(float(max(steps, default=-1))))
    while candidate >= 0:
        if flood.minimum(1.0 if candidate in steps else 0.0) == 1.0:
            return candidate
        candidate = int(flood.minimum(float(max((s for s in steps if s < candidate), default=-1))))
    return None
