"""Which device a rank computes on: one GPU per rank where there are GPUs, else the CPU."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch
from mpi4py import MPI

# Launchers that export the rank's index among the ranks of its node.
LOCAL_RANK_VARIABLES = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")


def local_rank(comm: MPI.Comm) -> int:
    """This rank's index on its node: from the launcher's variable, else from a shared-memory split.

    Collective over `comm` (every rank must call it), so the portable fallback is always available.
    """
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    portable = node_comm.Get_rank()
    node_comm.Free()
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return portable


def select_device(setting: str, local: int) -> torch.device:
    """'auto': cuda:<local % visible GPUs> when CUDA is available, else cpu; 'cpu' forces the CPU."""
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if setting == "cuda":
            raise RuntimeError("run.device = 'cuda' but CUDA is not available on this node; use run.device = 'auto' or 'cpu'.")
        return torch.device("cpu")
    # With --gpus-per-task=1 every rank sees exactly one GPU, so this is cuda:0.
    return torch.device(f"cuda:{local % torch.cuda.device_count()}")


def training_precision(precision: str, device: torch.device) -> AbstractContextManager:
    """The arithmetic of a learner's updates: 'float32' as written, 'bfloat16' under torch.autocast (matrix
    products in bfloat16, everything autocast keeps in float32 stays so; float64 tensors are never cast).
    Without autocast's cache of cast weights: it keys on the tensor, so after an optimiser step inside the
    region (a training phase takes many) it would hand later forwards the weights of before the step."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16", cache_enabled=False)
