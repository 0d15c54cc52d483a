"""Neighbour-only communication: topology graphs and mixing weights (pure numpy), the deadline-guarded
neighbour exchange over MPI, and consensus averaging. Knows nothing of RL or GPs.

`topology` and `weights` import no MPI; import `exchange` / `consensus` for the MPI parts.
"""

from odmar_mpi.comm.topology import TOPOLOGIES, Graph, TopologyError, build_graph, validate_graph
from odmar_mpi.comm.weights import (ALGORITHMS, WEIGHT_SCHEMES, WeightsError, check_mixing_matrix,
                                    finite_time_schedule, mixing_matrix, predicted_rounds, second_largest_modulus,
                                    spectrum)

__all__ = [
    "ALGORITHMS", "TOPOLOGIES", "WEIGHT_SCHEMES", "Graph", "TopologyError", "WeightsError", "build_graph",
    "check_mixing_matrix", "finite_time_schedule", "mixing_matrix", "predicted_rounds", "second_largest_modulus",
    "spectrum", "validate_graph",
]
