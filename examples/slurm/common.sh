# Sourced by every script here. Settings come from the environment (submit.sh passes them on):
#   RECIPE   the recipe (default examples/recipes/granite-4.1-8b.toml); RUN_DIR its run directory
#   GRANITE_PRINT_ONLY=1  print each granite command to stderr instead of running it (tests; a look before submitting)
set -euo pipefail
RECIPE=${RECIPE:-examples/recipes/granite-4.1-8b.toml}
RUN_DIR=${RUN_DIR:-runs/$(basename "$RECIPE" .toml)}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}

# granite ARGS...: one process (data stages, evaluation)
granite() {
  if [ "${GRANITE_PRINT_ONLY:-0}" = 1 ]; then echo "granite $*" >&2; else python -m granite_cli "$@"; fi
}

# distributed ARGS...: one torchrun per node over all the job's nodes (training stages)
distributed() {
  if [ "${GRANITE_PRINT_ONLY:-0}" = 1 ]; then echo "granite $*" >&2; return; fi
  local head
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" --rdzv-backend c10d \
    --rdzv-endpoint "$head:29500" -m granite_cli "$@"
}

# resume_flag NAME: --resume when a run of that checkpoint was interrupted (a preempted job resubmitted goes on),
# else --overwrite (a finished checkpoint of an earlier submission is replaced)
resume_flag() {
  if [ -d "$RUN_DIR/checkpoints/.$1.partial/checkpoints" ]; then echo --resume; else echo --overwrite; fi
}
