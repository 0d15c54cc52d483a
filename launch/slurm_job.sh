# Shared body of launch/slurm_cpu.sbatch and launch/slurm_gpu.sbatch (sourced; not run directly).
# Starts the run, or resumes it after a requeue; requeues the job until the run is complete.
#
# Variables (set them in the .sbatch file or export before sbatch):
#   MODULES     modules to load, e.g. "gcc/12 openmpi/4.1.5" (mpi4py must be built against this MPI:
#               module load ...; pip install --no-binary=mpi4py mpi4py)
#   VENV        the project's virtual environment           (default: $SLURM_SUBMIT_DIR/.venv)
#   LAUNCHER    how the ranks start                          (default: srun)
#                 srun     one Slurm task per rank, wired up by srun's PMI plugin (SRUN_MPI); a rank that
#                          dies (even in MPI_Init) ends the others at once instead of leaving them waiting
#                 mpiexec  the venv's own mpiexec (the PyPI mpich wheel's Hydra) inside the
#                          allocation: it detects Slurm and starts its proxies with srun itself
#   SRUN_MPI    srun's PMI plugin, for LAUNCHER=srun        (default: pmi2)
#                 pmi2     the PyPI mpich wheel (the project's own install; it has no PMIx client,
#                          so --mpi=pmix makes every rank abort with "unsupported PMI version PMIx")
#                 pmix     an mpi4py built against a PMIx-enabled site MPI (Open MPI 4/5, or an
#                          MPICH/Intel MPI configured with PMIx); `srun --mpi=list` shows what exists
#   RUN_ROOT    a folder on a filesystem every node sees     (default: $SLURM_SUBMIT_DIR/runs)
#   CONFIG      the TOML config for a new run                (default: configs/odmar_beta0.01.toml)
#   DEVICE_ARGS device options (the GPU script sets "--set run.device=cuda --set run.torch_threads=4")
#   EXTRA_ARGS  more odmar_mpi.run options, e.g. "--set run.seed=1" (no spaces inside a value; a value
#               with a comma, e.g. sac.hidden=[64,64], must be exported before sbatch: --export=A,B=...
#               splits at commas)
#   RUN_DIR     the run folder (default: $RUN_ROOT/<job name>-<job id>); launch/sweep.sbatch sets it per array
#               task, with RUN_ARGS (a bash array of more odmar_mpi.run options, one word each)
# A launch that does not wire MPI up (e.g. --mpi=none) would start N one-rank runs; the program
# compares the task count its launcher announces with its MPI world and refuses that with exit 2.
set -euo pipefail
: "${SLURM_SUBMIT_DIR:?submit with sbatch from the project root}"
cd "$SLURM_SUBMIT_DIR"
if [[ -n ${MODULES:-} ]]; then
    # shellcheck disable=SC2086  # a space-separated list of modules
    module load $MODULES
fi
VENV=${VENV:-$SLURM_SUBMIT_DIR/.venv}
LAUNCHER=${LAUNCHER:-srun}
SRUN_MPI=${SRUN_MPI:-pmi2}
RUN_ROOT=${RUN_ROOT:-$SLURM_SUBMIT_DIR/runs}
CONFIG=${CONFIG:-configs/odmar_beta0.01.toml}
case $LAUNCHER in
    srun) launch=(srun --mpi="$SRUN_MPI" --kill-on-bad-exit=1) ;;
    mpiexec) launch=("$VENV/bin/mpiexec" -n "$SLURM_NTASKS") ;;
    *) echo "LAUNCHER=$LAUNCHER: use srun (with SRUN_MPI=pmi2 or pmix) or mpiexec (the venv's own)" >&2; exit 2 ;;
esac
# The job id survives a requeue, so the requeued job finds its own run folder.
run_dir=${RUN_DIR:-$RUN_ROOT/${SLURM_JOB_NAME:-odmar}-${SLURM_JOB_ID}}
if [[ -e $run_dir/config.toml ]]; then
    args=(--resume "$run_dir")
else
    args=(--config "$CONFIG" --out "$run_dir")
fi
echo "$(date -Is) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NTASKS:-?} ranks by ${launch[*]}, run folder $run_dir"
# DEVICE_ARGS and EXTRA_ARGS are space-separated options (no spaces inside a value, e.g.
# --set sac.hidden=[64,64]); globbing is off so such a value is never taken for a file pattern.
set -f
status=0
# shellcheck disable=SC2086
"${launch[@]}" "$VENV/bin/python" -m odmar_mpi.run "${args[@]}" ${DEVICE_ARGS:-} ${EXTRA_ARGS:-} \
    ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} || status=$?
set +f
if (( status != 0 )); then
    # An error (the ranks' message is in the .err log): running it again would fail again.
    echo "$(date -Is) the ranks failed (exit $status); not requeueing job $SLURM_JOB_ID"
    exit "$status"
elif [[ -e $run_dir/COMPLETE ]]; then
    echo "$(date -Is) run complete: $run_dir"
else
    # Stopped by the time-limit signal: every rank checkpointed; run again from there.
    echo "$(date -Is) run stopped before its last step; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
