"""`python -m odmar_mpi.bench {consensus,gp,step-gossip,learner} ...`: benchmarks that print their figures against a
reference (learner: where a run's time goes, and MAMBA's matmul floor)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "consensus": "odmar_mpi.bench.consensus",  # neighbour gossip vs MPI.Allreduce (run under mpiexec)
    "gp": "odmar_mpi.bench.gp",  # sparse-GP statistics, posterior and prediction vs explicit inverses
    "step-gossip": "odmar_mpi.bench.step_gossip",  # per-step gossip vs a flood every step (run under mpiexec)
    "learner": "odmar_mpi.bench.learner",  # a short real run: steps/s per agent, seconds per part (under mpiexec)
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(BENCHMARKS)
        print(f"usage: python -m odmar_mpi.bench {{{names}}} [options]  (--help after the name for its options)", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
