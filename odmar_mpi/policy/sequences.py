"""One agent's replay as fixed-length windows of consecutive steps (MAMBA's DreamerMemory for one agent).

Row t of an episode holds what the agent saw and did at step t and what its neighbours sent at that
step (odmar_mpi.model.rssm's row convention): own observation o_t, own action a_t, reward r_t and
terminal flag after a_t, is_first (o_t starts an episode), and per neighbour slot the neighbour's action
a_t, latent class indices z_t, deterministic state h_t and whether the slot holds a neighbour.
Windows may cross episode boundaries (is_first marks the restarts), as MAMBA's do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from odmar_mpi.policy.rows import RowRing

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
    """Circular buffer of `capacity` rows on `device`, preallocated once (`RowRing`: one float32 row per step,
    staged on the host and copied to the device before a read); the oldest rows are overwritten.

    A row is [obs | action | reward | terminal | is_first | per slot: (action, C latent indices, h) | slot
    validity | available actions]: integers and flags are exact in float32. `sample(batch_size, length)` draws
    window starts uniformly among the windows of `length` consecutive rows that lie inside the stored data
    (never across the write position), with the buffer's own generator, and splits the rows into typed fields.
    Memory per row: 4 (obs_dim + 4 + slots (2 + C + H) + n_actions) bytes; e.g. obs_dim 30, 4 slots, C = 32,
    H = 256: about 4.8 KB, so 250 000 rows take 1.2 GB.
    """

    def __init__(self, capacity: int, obs_dim: int, n_slots: int, n_categoricals: int, deterministic: int,
                 seed: int, n_available: int | None = None, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"SequenceBuffer capacity = {capacity}: must be >= 1 (it is preallocated)")
        self.capacity = int(capacity)
        self.n_slots, self.n_categoricals = n_slots, n_categoricals
        self.device = torch.device(device)
        message = 1 + n_categoricals + deterministic
        widths = {"obs": obs_dim, "action": 1, "reward": 1, "terminal": 1, "is_first": 1,
                  "messages": n_slots * message, "nb_valid": n_slots, "available": n_available or 0}
        self.columns: dict[str, slice] = {}
        start = 0
        for name, width in widths.items():
            self.columns[name] = slice(start, start + width)
            start += width
        self.message_width = message
        self.rows = RowRing(self.capacity, start, self.device)
        self.has_available = n_available is not None
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return self.rows.size

    def add(self, obs: Any, action: int, reward: float, terminal: bool, is_first: bool, nb_action: Any,
            nb_latent: Any, nb_h: Any, nb_valid: Any, available: Any = None) -> None:
        """Append one step: obs (obs_dim,), nb_action (N,), nb_latent (N, C), nb_h (N, H), nb_valid (N,),
        available (n_actions,) if the buffer stores it; numpy arrays or sequences (host data)."""
        row, c = self.rows.next_row(), self.columns
        row[c["obs"]] = obs
        row[c["action"]] = action
        row[c["reward"]] = reward
        row[c["terminal"]] = terminal
        row[c["is_first"]] = is_first
        messages = row[c["messages"]].reshape(self.n_slots, self.message_width)
        messages[:, 0] = nb_action
        messages[:, 1:1 + self.n_categoricals] = nb_latent
        messages[:, 1 + self.n_categoricals:] = nb_h
        row[c["nb_valid"]] = nb_valid
        if self.has_available:
            row[c["available"]] = available

    def sample(self, batch_size: int, length: int) -> SequenceBatch:
        """`batch_size` windows of `length` consecutive rows (MAMBA: 40 windows of 20), time first."""
        size = self.rows.size
        if not 1 <= length <= size:
            raise ValueError(f"sample(length = {length}) from a buffer holding {size} rows: the window must "
                             f"fit into the stored rows (collect more steps first, or shorten sequence_length)")
        self.rows.flush()
        offsets = torch.randint(0, size - length + 1, (batch_size,), generator=self.generator, device=self.device)
        steps = torch.arange(length, device=self.device).unsqueeze(1)
        index = (self.rows.oldest + offsets.unsqueeze(0) + steps) % self.capacity  # (T, B)
        data = self.rows.storage[index]
        c, n, k = self.columns, self.n_slots, self.n_categoricals
        messages = data[..., c["messages"]].unflatten(-1, (n, self.message_width))
        return SequenceBatch(obs=data[..., c["obs"]], action=data[..., c["action"].start].long(),
                             reward=data[..., c["reward"].start], terminal=data[..., c["terminal"].start].bool(),
                             is_first=data[..., c["is_first"].start].bool(), nb_action=messages[..., 0].long(),
                             nb_latent=messages[..., 1:1 + k].long(), nb_h=messages[..., 1 + k:],
                             nb_valid=data[..., c["nb_valid"]].bool(),
                             available=data[..., c["available"]].bool() if self.has_available else None)

    def state_dict(self) -> dict[str, Any]:
        """The stored rows (on the host), write position and generator state: `load_state_dict` restores them
        exactly."""
        return {**self.rows.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows.load_state_dict(state, "SequenceBuffer")
        self.generator.set_state(state["generator"])
