"""`python -m odmar_mpi.report RUN_DIR ...` (see `odmar_mpi.report.cli`)."""

from odmar_mpi.report.cli import main

main()
