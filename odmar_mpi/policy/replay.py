"""Replay buffers as one preallocated tensor, and batches that mix real and imagined data."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from odmar_mpi.policy.rows import RowRing


class Batch(NamedTuple):
    """Transitions as float32 tensors on one device; n = number of transitions."""

    obs: torch.Tensor  # (n, obs_dim)
    actions: torch.Tensor  # (n, act_dim)
    rewards: torch.Tensor  # (n,)
    next_obs: torch.Tensor  # (n, obs_dim)
    terminated: torch.Tensor  # (n,), 1.0 where the episode truly ended (not where it was truncated)


class ReplayBuffer:
    """Circular transition buffer: one (capacity, width) float32 tensor on `device`, allocated once (`RowRing`).

    A row is [obs | action | reward | next_obs | terminated]. When full, the oldest row is
    overwritten. `add` writes one transition into the ring's numpy staging block (no tensor per
    call). `sample` draws uniformly from the filled rows with the buffer's own generator (seeded here).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity = {capacity}: must be >= 1 (it is preallocated; "
                             "set sac.buffer_size or the imagined-buffer sizes to a positive number)")
        self.capacity = int(capacity)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self._obs = slice(0, obs_dim)
        self._actions = slice(obs_dim, obs_dim + act_dim)
        self._reward = obs_dim + act_dim
        self._next_obs = slice(obs_dim + act_dim + 1, 2 * obs_dim + act_dim + 1)
        self._terminated = 2 * obs_dim + act_dim + 1
        self.width = 2 * obs_dim + act_dim + 2
        self.rows = RowRing(self.capacity, self.width, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.rows.size

    @property
    def storage(self) -> torch.Tensor:
        """The (capacity, width) tensor of rows (staged rows not yet flushed are not in it)."""
        return self.rows.storage

    def add(self, obs: Any, action: Any, reward: float, next_obs: Any, terminated: bool) -> None:
        """Append one transition; obs/next_obs (obs_dim,), action (act_dim,) as numpy arrays or sequences."""
        row = self.rows.next_row()
        row[self._obs] = obs
        row[self._actions] = action
        row[self._reward] = reward
        row[self._next_obs] = next_obs
        row[self._terminated] = terminated

    def add_batch(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                  next_obs: torch.Tensor, terminated: torch.Tensor) -> None:
        """Append n transitions in order: obs/next_obs (n, obs_dim), actions (n, act_dim), rewards and
        terminated (n,). With n > capacity only the last `capacity` are kept."""
        n = obs.shape[0]
        expected = {"obs": (n, self.obs_dim), "actions": (n, self.act_dim), "rewards": (n,),
                    "next_obs": (n, self.obs_dim), "terminated": (n,)}
        given = {"obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs, "terminated": terminated}
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"ReplayBuffer.add_batch: {name} has shape {tuple(given[name].shape)}, expected "
                                 f"{shape} (n = {n} transitions, obs_dim = {self.obs_dim}, act_dim = {self.act_dim})")
        self.rows.append(torch.cat([t.to(self.device, torch.float32).reshape(n, -1)
                                    for t in (obs, actions, rewards, next_obs, terminated)], dim=1))

    def sample(self, n: int) -> Batch:
        """n transitions drawn uniformly with replacement from the filled rows."""
        if self.rows.size == 0:
            raise RuntimeError(f"ReplayBuffer.sample({n}): the buffer is empty; add transitions before sampling")
        self.rows.flush()
        index = torch.randint(self.rows.size, (n,), generator=self.generator, device=self.device)
        rows = self.storage.index_select(0, index)
        return Batch(rows[:, self._obs], rows[:, self._actions], rows[:, self._reward],
                     rows[:, self._next_obs], rows[:, self._terminated])

    def sample_states(self, n: int) -> torch.Tensor:
        """Observations of n uniformly drawn transitions, (n, obs_dim): start states for imagination."""
        return self.sample(n).obs.contiguous()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of the filled rows, position, size and generator state."""
        return {**self.rows.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` snapshot; the buffer then samples exactly as the saved one would."""
        self.rows.load_state_dict(state, "ReplayBuffer")
        self.generator.set_state(state["generator"])


def concat_batches(a: Batch, b: Batch) -> Batch:
    """The transitions of `a` followed by those of `b`."""
    return Batch(*(torch.cat(pair) for pair in zip(a, b)))


def sample_mixed(real: ReplayBuffer, imagined: ReplayBuffer, batch_size: int, real_ratio: float) -> Batch:
    """A batch of max(1, round(real_ratio * batch_size)) real transitions followed by imagined ones.

    At least one transition is always real (as the original); with an empty imagined buffer the
    whole batch is real.
    """
    if batch_size < 1 or not 0.0 <= real_ratio <= 1.0:
        raise ValueError(f"sample_mixed: batch_size = {batch_size}, real_ratio = {real_ratio}; need batch_size >= 1 "
                         "and real_ratio in [0, 1] (sac.batch_size, sac.real_ratio)")
    n_real = max(1, round(real_ratio * batch_size))
    if len(imagined) == 0 or n_real >= batch_size:
        return real.sample(batch_size)
    return concat_batches(real.sample(n_real), imagined.sample(batch_size - n_real))
