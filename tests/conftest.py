"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture
def comm() -> Iterator[object]:
    """A fresh duplicate of MPI.COMM_WORLD for one MPI test, freed afterwards, so no message of one test can
    match a receive of another. mpi4py is imported here, not at module level, so serial runs do not need it."""
    from mpi4py import MPI

    duplicate = MPI.COMM_WORLD.Dup()
    yield duplicate
    duplicate.Free()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: tiny models run fastest so, and the test machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
