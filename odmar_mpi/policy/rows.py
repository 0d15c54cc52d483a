"""A circular store of fixed-width float32 rows on one device, written a row at a time from the host.

Both replay buffers keep their data this way: `ReplayBuffer` one transition per row, `SequenceBuffer`
one step of an agent per row. A row is written into a small numpy staging block (no tensor and no device
copy per step); staged rows reach the device in one copy before anything reads the store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

STAGE_ROWS = 1024
"""Rows staged in numpy before one copy to the device (any read flushes first)."""


class RowRing:
    """`capacity` rows of `width` float32 on `device`, allocated once; when full, the oldest row is overwritten.

    `position` is the row the next one goes to (staged rows count as written), `size` the rows held.
    """

    def __init__(self, capacity: int, width: int, device: torch.device | str) -> None:
        self.capacity, self.width = int(capacity), int(width)
        self.device = torch.device(device)
        self.storage = torch.zeros(self.capacity, self.width, dtype=torch.float32, device=self.device)
        self._stage = np.zeros((min(STAGE_ROWS, self.capacity), self.width), dtype=np.float32)
        self._staged = 0
        self.position = 0
        self.size = 0

    def next_row(self) -> np.ndarray:
        """The staged row to fill next, (width,); it counts as written once this returns."""
        if self._staged == len(self._stage):
            self.flush()
        row = self._stage[self._staged]
        self._staged += 1
        self._advance(1)
        return row

    def append(self, rows: torch.Tensor) -> None:
        """Append rows (n, width) in order; with n > capacity only the last `capacity` are kept."""
        self.flush()
        n = len(rows)
        kept = rows[-self.capacity:].to(self.device, torch.float32)
        self._write(kept, (self.position + n - len(kept)) % self.capacity)
        self._advance(n)

    @property
    def oldest(self) -> int:
        """Index of the oldest row held."""
        return self.position if self.size == self.capacity else 0

    def flush(self) -> None:
        """Copy the staged rows to the device (one copy, two where the ring wraps)."""
        if self._staged:
            start = (self.position - self._staged) % self.capacity
            self._write(torch.from_numpy(self._stage[: self._staged]), start)
            self._staged = 0

    def _advance(self, n: int) -> None:
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _write(self, rows: torch.Tensor, start: int) -> None:
        """Copy rows (k <= capacity, width) into the ring from row `start`, wrapping at the end."""
        head = min(len(rows), self.capacity - start)
        self.storage[start:start + head].copy_(rows[:head])
        self.storage[: len(rows) - head].copy_(rows[head:])

    def state_dict(self) -> dict[str, Any]:
        """The filled rows (on the host), position and size."""
        self.flush()
        return {"capacity": self.capacity, "position": self.position, "size": self.size,
                "data": self.storage[: self.size].cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], owner: str) -> None:
        """Restore a `state_dict()`; `owner` names the buffer in the error for a checkpoint of other sizes."""
        data = state["data"]
        if int(state["capacity"]) != self.capacity or tuple(data.shape[1:]) != (self.width,):
            raise ValueError(f"{owner}.load_state_dict: saved buffer has capacity {state['capacity']} and rows of "
                             f"{tuple(data.shape[1:])}, this one {self.capacity} and ({self.width},); restore with "
                             "the configuration the checkpoint was written with")
        self._staged = 0
        self.size, self.position = int(state["size"]), int(state["position"])
        self.storage[: self.size].copy_(data)
