#!/usr/bin/env bash
# Where a PPO iteration's time goes, for PPO's placements on this machine (issue 17): the share of
# an iteration in generation, scoring and training, with the four models on every rank (shared)
# or the critic and reward model on their own ranks (split, train.ppo_critic_ranks).
# The models are the toy task's SFT model and reward model (scripts/experiments/align_toy.sh,
# seed 1: llama-small pattern *-*-*-*-, 0.86M parameters); each layout runs ITERS
# iterations of 64 rollouts of at most 12 new tokens in 4 optimizer steps of 16 sequences
# (micro-batch 8), so a split run hands the critic 4 chunks; the report takes the medians of the
# iterations after the first two (bench/ppo_placement_report.py).
#   bench/ppo_placement.sh [ALIGN_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ALIGN=${1:-runs/align_toy}
OUT=${2:-runs/ppo_placement}
ITERS=${ITERS:-10}
FF=${FF:-./build/fivefold}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
A=$ALIGN/seed1
[[ -f $A/sft/model.safetensors && -f $A/rm/model.safetensors ]] ||
  { echo "no toy models in $A: run scripts/experiments/align_toy.sh first" >&2; exit 1; }
mkdir -p "$OUT"

run() {  # NAME RANKS THREADS FLAGS...
  local name=$1 np=$2 threads=$3
  shift 3
  rm -rf "${OUT:?}/$name"
  mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS="$threads" \
    $FF align ppo --init_from "$A/sft/model.safetensors" --reward_model "$A/rm/model.safetensors" \
    --data_path "$ALIGN/data/train_prompts.jsonl" --steps "$ITERS" --ppo_rollout_prompts 64 \
    --ppo_max_new_tokens 12 --micro_batch 8 --lr 2e-4 --min_lr 2e-5 --ppo_critic_lr 1e-3 --warmup_steps 0 --lr_decay constant --seed 1 \
    --out_dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}

run one_process 1 2 --grad_accum 2
run shared_dp2 2 1 --grad_accum 1
run split_1_1 2 1 --grad_accum 2 --ppo_critic_ranks 1
/usr/bin/python3 bench/ppo_placement_report.py "$OUT" one_process shared_dp2 split_1_1
