"""Per-step gossip from 4 to 64 ranks: `python -m odmar_mpi.bench step-gossip` for each rank count and topology.

    python benchmarks/step_gossip_scale.py [--ranks 4,8,16,32,64] [--steps 300] [--markdown]

Starts one MPI job per (ranks, topology) with the venv's mpiexec (oversubscribed where the ranks
outnumber the cores) and prints one row each: rounds and microseconds per step of the pipelined
gossip, against a flood every step measured in the same job. The benchmark module imports no torch,
so 64 ranks fit on a small machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
TOPOLOGIES = ("ring", "torus", "exponential")


def measure(ranks: int, topology: str, steps: int) -> dict | str:
    """The benchmark's JSON result, or why it could not run (e.g. a torus that does not fit)."""
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "odmar_mpi.bench", "step-gossip",
               "--topology", topology, "--steps", str(steps), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return " ".join(done.stderr.strip().splitlines()[-1:]) or f"exit {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--ranks", default="4,8,16,32,64", show_default=True, help="Comma-separated rank counts.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--markdown", is_flag=True, help="Print a markdown table (as in docs/scaling.md).")
def main(ranks: str, steps: int, markdown: bool) -> None:
    rows = []
    for count in (int(r) for r in ranks.split(",")):
        for topology in TOPOLOGIES:
            result = measure(count, topology, steps)
            rows.append((count, topology, result))
            if not markdown:
                print(count, topology, json.dumps(result), flush=True)
    if markdown:
        print("| ranks | topology | diameter | pipelined rounds/step | pipelined us/step | bytes/neighbour/step "
              "| flood rounds/step | flood us/step | flood / pipelined |")
        print("|---|---|---|---|---|---|---|---|---|")
        for count, topology, r in rows:
            if isinstance(r, str):
                print(f"| {count} | {topology} | - | - | - | - | - | - | not run: {r} |")
                continue
            print(f"| {count} | {topology} | {r['diameter']} | {r['rounds_per_step']:.0f} | "
                  f"{1e6 * r['seconds_per_step']:.0f} | {r['bytes_per_neighbour_per_step']} | "
                  f"{r['flood_rounds_per_step']} | {1e6 * r['flood_seconds_per_step']:.0f} | "
                  f"{r['flood_over_pipelined']:.1f} |")


if __name__ == "__main__":
    main()
