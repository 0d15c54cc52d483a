"""`python -m odmar_mpi` is `python -m odmar_mpi.run`."""

from odmar_mpi.run import cli

cli()
