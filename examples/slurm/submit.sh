#!/bin/bash
# Submit the whole Granite 4.1 recipe to Slurm, each job waiting for what it needs (--dependency=afterok):
#
#   heldout, mix-tokenize 1..4          data, all at once (job arrays)
#   pretrain 1 -> 2 -> 3 -> 4           each phase after its data and the phase before; an eval after each
#   mix-tokenize 5/STAGE, extend-context STAGE (in order)   after phase 4; an eval after the last
#   filter (array) -> filter-dedup      at once (the SFT data does not wait for pre-training)
#   sft                                 after the last extend-context stage and the dedup; an eval after it
#   reward-model                        after sft
#   rl 1 -> 2 -> 3 -> 4                 rl 1 after sft and the reward model; an eval after each
#
#   RECIPE=examples/recipes/granite-4.1-3b.toml SFT_DATA='/data/sft/*.jsonl.zst' examples/slurm/submit.sh
#   examples/slurm/submit.sh --dry-run   # print the sbatch commands and their dependencies, submit nothing
#
# Sizes: NODES (training jobs, default 16), RL_NODES (default 4), MIX_WORKERS and FILTER_WORKERS (array sizes).
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
export RECIPE=${RECIPE:-examples/recipes/granite-4.1-8b.toml}
export RUN_DIR=${RUN_DIR:-runs/$(basename "$RECIPE" .toml)}
export SFT_DATA=${SFT_DATA:-${GRANITE_DATA:-/data}/sft/*.jsonl.zst}
NODES=${NODES:-16}
RL_NODES=${RL_NODES:-4}
MIX_WORKERS=${MIX_WORKERS:-64}
FILTER_WORKERS=${FILTER_WORKERS:-32}
S=examples/slurm
STAGES=$(python -c "from granite_cli.recipe import load_recipe; print(' '.join(s.name for s in load_recipe('$RECIPE').phase(5).stages))")

# submit NAME AFTER SBATCH-ARGS... : submit a job once the jobs named in AFTER (space-separated) succeeded, and
# remember its id under NAME; with --dry-run print the command with the names in place of ids
declare -A ID
submit() {
  local name=$1 after=$2 args=() ids=()
  shift 2
  for job in $after; do ids+=("${ID[$job]}"); done
  if [ ${#ids[@]} -gt 0 ]; then args=(--dependency="afterok:$(IFS=:; echo "${ids[*]}")"); fi
  args+=("$@")
  if [ "$DRY_RUN" = 1 ]; then
    ID[$name]="<$name>"
    echo "$name: sbatch ${args[*]}"
  else
    ID[$name]=$(sbatch --parsable --job-name "granite-$name" "${args[@]}")
    echo "$name: job ${ID[$name]}"
  fi
}

submit heldout "" $S/heldout.sbatch
for phase in 1 2 3 4; do
  submit "mix-$phase" "" --array=0-$((MIX_WORKERS - 1)) $S/mix-tokenize.sbatch $phase
done
previous=""
for phase in 1 2 3 4; do
  submit "pretrain-$phase" "mix-$phase heldout $previous" --nodes "$NODES" $S/pretrain.sbatch $phase
  submit "eval-pretrain-$phase" "pretrain-$phase" $S/eval.sbatch "$RUN_DIR/checkpoints/pretrain-phase-$phase"
  previous="pretrain-$phase"
done
for stage in $STAGES; do
  submit "mix-5-$stage" "" --array=0-$((MIX_WORKERS - 1)) $S/mix-tokenize.sbatch 5 "$stage"
  submit "extend-$stage" "mix-5-$stage $previous" --nodes "$NODES" $S/extend-context.sbatch "$stage"
  previous="extend-$stage"
done
submit eval-extend-context "$previous" $S/eval.sbatch "$RUN_DIR/checkpoints/extend-context"
submit filter "" --array=0-$((FILTER_WORKERS - 1)) $S/filter.sbatch
submit filter-dedup "filter" $S/filter-dedup.sbatch
submit sft "$previous filter-dedup" --nodes "$NODES" $S/sft.sbatch
submit eval-sft "sft" $S/eval.sbatch "$RUN_DIR/checkpoints/sft"
submit reward-model "sft" --nodes "$RL_NODES" $S/reward-model.sbatch
previous="sft reward-model"
for stage in 1 2 3 4; do
  submit "rl-$stage" "$previous" --nodes "$RL_NODES" $S/rl.sbatch $stage
  submit "eval-rl-$stage" "rl-$stage" $S/eval.sbatch "$RUN_DIR/checkpoints/rl-stage-$stage"
  previous="rl-$stage"
done
