"""SAC for one agent, replay buffers and optimistic imagined rollouts. Knows nothing of GPs or MPI."""

from odmar_mpi.policy.imagination import imagine_rollouts
from odmar_mpi.policy.replay import Batch, ReplayBuffer, concat_batches, sample_mixed
from odmar_mpi.policy.sac import SAC, SACConfig

__all__ = ["SAC", "Batch", "ReplayBuffer", "SACConfig", "concat_batches", "imagine_rollouts", "sample_mixed"]
