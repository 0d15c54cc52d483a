"""Sparse-GP world model: data -> sufficient statistics, (summed) statistics -> posterior. Knows nothing of MPI."""

from odmar_mpi.model.inducing import inducing_points
from odmar_mpi.model.kernel import world_model_kernel
from odmar_mpi.model.sparse_gp import PosteriorError, SparseGP
from odmar_mpi.model.statistics import pack, packed_size, unpack

__all__ = ["PosteriorError", "SparseGP", "inducing_points", "pack", "packed_size", "unpack", "world_model_kernel"]
