#!/usr/bin/env bash
# Run N agents on this machine: one MPI rank per agent, from the project's .venv.
#   launch/local.sh N [odmar_mpi.run options...]
#   launch/local.sh 8
#   launch/local.sh 5 --config configs/odmar_beta0.01.toml --set run.seed=1
# Oversubscribes when N exceeds the cores (slower, still correct). Prints the run folder at the end.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: launch/local.sh N [odmar_mpi.run options]   (N = number of agents = MPI ranks)" >&2
    exit 2
fi
ranks=$1; shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ODMAR_VENV:-$root/.venv}
if [[ ! -x $venv/bin/python ]]; then
    echo "no virtual environment at $venv: run 'make install' in $root first (or set ODMAR_VENV)." >&2
    exit 2
fi
cores=$(nproc)
if (( ranks > cores )); then
    echo "launch/local.sh: $ranks ranks on $cores cores (oversubscribed)" >&2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e  # keep going after a failed run: report its status and folder below
"$venv/bin/mpiexec" -n "$ranks" "$venv/bin/python" -m odmar_mpi.run "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
run_dir=$(sed -n 's/^run folder \([^:]*\):.*/\1/p; s/^resuming \(.*\) from step.*/\1/p' "$log" | head -n 1)
[[ -n $run_dir ]] && echo "run folder: $run_dir"
exit "$status"
