"""What a node needs of an algorithm: the `Learner` interface, and the transitions it is fed.

A learner owns everything that learns on one rank (policies, models, buffers, their optimisers and
random streams) and nothing else: the node owns the world copy, the gossip and the telemetry, and
calls the learner in the order of the loop (docs/architecture.md):

    act -> message/receive (neighbours) -> (world steps) -> observe (once the step's reward is
    complete) -> model_step every `model_every` steps -> update every step after warm-up ->
    evaluation hooks

`mode` says who acts: "warmup" (uniformly random actions, which the learner draws and may record),
"explore" (training), "evaluate" (deterministic episodes on the evaluation copy of the world) or
"random" (the uniformly random baseline, evaluated like "evaluate"). A learner with recurrent state
keeps one per copy of the world: "evaluate" and "random" never disturb training.

A learner never imports MPI: whatever it averages with its neighbours goes through the
`VectorGossip` handle it is given in `model_step`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, ContextManager

import numpy as np
import torch

from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.comm.topology import Graph
from odmar_mpi.records import Records, Tables


@dataclass(frozen=True)
class Transition:
    """One real step of this rank's agent, with the reward it learns from (team or own)."""

    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    terminated: bool  # the agent's part ended (dead, arrived, the task done): nothing follows
    truncated: bool  # cut off by the time limit: the task would have gone on
    available: np.ndarray | None = None  # the action mask at obs (int8, 1 = available), where the world has one


@dataclass
class LearnerContext:
    """What a learner is built from."""

    cfg: Any
    """The run's Config: the learner reads its own sections."""
    world: Any
    """This rank's world copy: spaces, bounds and the reward function imagination may use."""
    rank: int
    n_agents: int
    graph: Graph
    """The communication graph (every rank's neighbour lists: a learner may need its neighbourhood's shape)."""
    device: torch.device
    seed: Callable[[str], int]
    """seed(stream name) -> the rank's seed of that named stream (odmar_mpi.streams)."""
    records: Records
    """Where the learner appends rows to its own tables (declared in `Learner.tables`)."""
    clock: Callable[[str], ContextManager[None]]
    """clock(phase) times a block as one of the node's phases (odmar_mpi.telemetry.PHASES)."""


class NonFiniteError(RuntimeError):
    """NaN or inf in a loss, a gradient, parameters or model statistics: the run stops before the value can reach
    a neighbour (averaging, consensus) and keeps its last good checkpoint."""


def require_finite(quantity: str, values: Any, rank: int, step: int, fix: str = "lower the learning rates") -> None:
    """Raise NonFiniteError naming the rank, step and `quantity` unless every entry of `values` is finite."""
    if not np.isfinite(np.asarray(values)).all():
        raise NonFiniteError(f"rank {rank}, step {step}: {quantity} contain NaN or inf; the run stops here, before "
                             f"any averaging, and keeps its last good checkpoint. {fix[0].upper()}{fix[1:]}.")


def average_with_neighbours(parameters: list[torch.nn.Parameter], gossip: VectorGossip, rounds: int, rank: int,
                            step: int, quantity: str) -> tuple[float, float]:
    """D-PSGD's averaging step: `rounds` rounds of x <- W x over the parameters, flattened into one float64 host
    buffer (one copy from the device and one back). Refuses non-finite parameters before anything is sent.

    Returns (disagreement: the largest relative difference |x_j - x_i|_inf / max(|x_i|_inf, |x_j|_inf) to a
    neighbour j before the averaging, measured from what the first round received, 0 without rounds; bytes sent
    to each neighbour). Every rank calls it at the same step (collective)."""
    flat = torch.nn.utils.parameters_to_vector(parameters).detach()
    vector = flat.to("cpu", torch.float64).numpy()
    require_finite(quantity, vector, rank, step)
    if not rounds:
        return 0.0, 0.0
    result = gossip.mix(vector, rounds)
    torch.nn.utils.vector_to_parameters(torch.as_tensor(result.value).to(flat.device, flat.dtype), parameters)
    return result.residuals[0], float(8 * vector.size * rounds)


def figures(*named: tuple[str, float]) -> str:
    """A learner's progress note: "label value" pairs, each value to 3 significant digits, right-aligned in 6
    characters ("-" where there is none yet), so successive lines align for values from 0.01 to 999."""
    return ", ".join(f"{label} {value:6.3g}" if math.isfinite(value) else f"{label} {'-':>6}" for label, value in named)


MODES = ("warmup", "explore", "evaluate", "random")
TRAINING_MODES = ("warmup", "explore")


class Learner(ABC):
    """One rank's algorithm. Every method is called at the same step on every rank."""

    tables: ClassVar[Tables] = {}
    """Records tables this learner writes, {name: columns}."""

    model_every: int = 0
    """Steps between `model_step` calls after warm-up; 0 = the learner has no model step."""

    message_size: int = 0
    """float64 values the learner sends each neighbour every step (0: it sends nothing)."""

    @abstractmethod
    def act(self, obs: np.ndarray, mode: str, available: np.ndarray | None = None) -> np.ndarray:
        """The action for `obs` in `mode` (one of MODES), among the `available` ones (an int8 mask, 1 =
        available; None: all) where the world restricts actions."""

    def begin_episode(self, mode: str) -> None:
        """The world copy of `mode` was reset: recurrent state starts over."""

    def leave(self, mode: str) -> None:
        """The agent has left the episode of the world copy of `mode` (dead, arrived) while the others go on: it
        acts no more until `begin_episode`, but `message` is still called every step (to say it is gone)."""

    def message(self, mode: str) -> np.ndarray:
        """After `act`: this step's message to every neighbour, (message_size,) float64."""
        raise NotImplementedError

    def receive(self, mode: str, messages: list[np.ndarray]) -> None:
        """The neighbours' messages of this step, in the order of this rank's neighbour list."""

    @abstractmethod
    def observe(self, transition: Transition) -> None:
        """Take in one real transition (its reward complete)."""

    def model_step(self, step: int, gossip: VectorGossip) -> None:
        """Every `model_every` steps after warm-up: update the world model (may gossip) and use it."""

    @abstractmethod
    def update(self, step: int) -> None:
        """The policy updates of one environment step after warm-up."""

    def evaluated(self, step: int, transitions: list[Transition]) -> None:
        """After an evaluation, with its episodes' transitions (rewards are the agent's own)."""

    def progress_note(self) -> str:
        """A few words for the progress line (e.g. the last consensus residual)."""
        return ""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (copies)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` snapshot."""
