"""One agent's replay as fixed-length windows of consecutive steps (MAMBA's DreamerMemory for one agent).

Row t of an episode holds what the agent saw and did at step t and what its neighbours sent at that
step (odmar_mpi.model.rssm's row convention): own observation o_t, own action a_t, reward r_t and
terminal flag after a_t, is_first (o_t starts an episode), and per neighbour slot the neighbour's action
a_t, latent class indices z_t, deterministic state h_t and whether the slot holds a neighbour.
Windows may cross episode boundaries (is_first marks the restarts), as MAMBA's do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

Tensor = torch.Tensor


class SequenceBatch(NamedTuple):
    """B windows of T consecutive rows, time first: the fields `WorldModel.loss` and `WorldModel.imagine` read."""

    obs: Tensor  # (T, B, obs_dim) float32
    action: Tensor  # (T, B) long
    reward: Tensor  # (T, B) float32
    terminal: Tensor  # (T, B) bool, the episode ended by termination after this step (not truncation)
    is_first: Tensor  # (T, B) bool
    nb_action: Tensor  # (T, B, N) long, -1 = none
    nb_latent: Tensor  # (T, B, N, C) long, -1 = none
    nb_h: Tensor  # (T, B, N, H) float32
    nb_valid: Tensor  # (T, B, N) bool
    available: Tensor | None  # (T, B, n_actions) bool where the world restricts actions, else None


class SequenceBuffer:
    """Circular buffer of `capacity` rows, every field preallocated once; the oldest rows are overwritten.

    `sample(batch_size, length)` draws window starts uniformly among the windows of `length` consecutive
    rows that lie inside the stored data (never across the write position), with the buffer's own
    generator. Memory per row: 4 obs_dim + 14 + slots * (9 + 2 C + 4 H) bytes (+ n_actions with
    available actions); e.g. obs_dim 30, 4 slots, C = 32, H = 256: about 4.5 KB, so 250 000 rows take 1.1 GB.
    """

    def __init__(self, capacity: int, obs_dim: int, n_slots: int, n_categoricals: int, deterministic: int,
                 seed: int, n_available: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"SequenceBuffer capacity = {capacity}: must be >= 1 (it is preallocated)")
        self.capacity = int(capacity)
        self.fields: dict[str, Tensor] = {
            "obs": torch.zeros(capacity, obs_dim),
            "action": torch.zeros(capacity, dtype=torch.long),
            "reward": torch.zeros(capacity),
            "terminal": torch.zeros(capacity, dtype=torch.bool),
            "is_first": torch.zeros(capacity, dtype=torch.bool),
            "nb_action": torch.zeros(capacity, n_slots, dtype=torch.long),
            "nb_latent": torch.zeros(capacity, n_slots, n_categoricals, dtype=torch.int16),  # K < 32768 classes
            "nb_h": torch.zeros(capacity, n_slots, deterministic),
            "nb_valid": torch.zeros(capacity, n_slots, dtype=torch.bool),
        }
        if n_available is not None:
            self.fields["available"] = torch.zeros(capacity, n_available, dtype=torch.bool)
        self.position = 0  # row the next step goes to
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Any, action: int, reward: float, terminal: bool, is_first: bool, nb_action: Any,
            nb_latent: Any, nb_h: Any, nb_valid: Any, available: Any = None) -> None:
        """Append one step: obs (obs_dim,), nb_action (N,), nb_latent (N, C), nb_h (N, H), nb_valid (N,),
        available (n_actions,) if the buffer stores it; arrays, tensors or sequences."""
        row = {"obs": obs, "action": action, "reward": reward, "terminal": terminal, "is_first": is_first,
               "nb_action": nb_action, "nb_latent": nb_latent, "nb_h": nb_h, "nb_valid": nb_valid}
        if "available" in self.fields:
            row["available"] = available
        for name, value in row.items():
            self.fields[name][self.position] = torch.as_tensor(np.asarray(value)).to(self.fields[name].dtype)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, length: int) -> SequenceBatch:
        """`batch_size` windows of `length` consecutive rows (MAMBA: 40 windows of 20), time first."""
        if not 1 <= length <= self.size:
            raise ValueError(f"sample(length = {length}) from a buffer holding {self.size} rows: the window must "
                             f"fit into the stored rows (collect more steps first, or shorten sequence_length)")
        oldest = self.position if self.size == self.capacity else 0
        offsets = torch.randint(0, self.size - length + 1, (batch_size,), generator=self.generator)
        rows = (oldest + offsets.unsqueeze(0) + torch.arange(length).unsqueeze(1)) % self.capacity  # (T, B)
        data = {name: field[rows] for name, field in self.fields.items()}
        data["nb_latent"] = data["nb_latent"].long()
        return SequenceBatch(**{**data, "available": data.get("available")})

    def state_dict(self) -> dict[str, Any]:
        """The stored rows, write position and generator state: `load_state_dict` restores them exactly."""
        return {"position": self.position, "size": self.size, "generator": self.generator.get_state(),
                "fields": {name: field[:self.size].clone() for name, field in self.fields.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, field in self.fields.items():
            stored = state["fields"][name]
            if stored.shape[1:] != field.shape[1:] or len(stored) > self.capacity:
                raise ValueError(f"SequenceBuffer state field {name!r} has rows of shape {tuple(stored.shape)}; this "
                                 f"buffer holds {self.capacity} rows of shape {tuple(field.shape[1:])}: resume with "
                                 "the run's original sizes")
            field.zero_()
            field[:len(stored)] = stored
        self.position, self.size = int(state["position"]), int(state["size"])
        self.generator.set_state(state["generator"])
