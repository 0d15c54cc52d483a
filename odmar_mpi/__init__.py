"""odmar-mpi: optimistic distributed multi-agent RL, one MPI rank per agent."""

__version__ = "0.1.0"
