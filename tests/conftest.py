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
