#!/usr/bin/env bash
# Dense-to-MoE upcycling at small scale (specs/methods.md §4.6, §5.4; issue 14), for SEEDS seeds
# of the continued training.
#   1. Pre-train a small dense Llama-style model (SwiGLU) on KJV once (seed 1).
#   2. From it, continue training at equal tokens (same steps, micro-batch, sequence length and
#      lr schedule) as: dense continue; E8K2 G1 (each router order); E16K4 G4 with virtual groups
#      and weight scaling (each router order); E16K4 G4 naive (random shards and router, no
#      scaling; softmax then top-k). Online upcycling (train --init_from DENSE --upcycle_experts).
#      All of these are dropless (moe_capacity_factor 0).
#   3. Capacity factors 1, 1.25, 2 for E8K2 G1 softmax-then-top-k (dropless is the run of step 2).
#   4. One offline `fivefold upcycle` + `fivefold eval --part valid` per upcycled variant (seed 1),
#      to check the step-0 loss against the online run's.
# Then scripts/experiments/upcycle_report.py writes OUT/summary.md and the figures
# docs/figures/upcycle_{loss,capacity}.svg (FIG_DIR to change).
# Scale: byte tokenizer, d_model 128, 4 layers, ffn_hidden 512 (1.1M parameters dense), sequences
# of 64 tokens, 16 a step; pre-training PRE_STEPS steps, continued training STEPS steps
# (STEPS x 1,024 tokens). About 90 s of pre-training and 140 s a seed on 2 idle cores (600 s for
# two seeds while another engineer's tests shared the machine). Steps whose outputs exist are
# skipped.
#   scripts/experiments/upcycle.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/upcycle}
SEEDS=${2:-"1 2 3 4 5"}
FF=${FF:-./build/fivefold}
PY=/usr/bin/python3
FIG_DIR=${FIG_DIR:-docs/figures}
PRE_STEPS=${PRE_STEPS:-400}
STEPS=${STEPS:-120}
mkdir -p "$OUT" "$FIG_DIR"
start=$SECONDS
[[ -s data/kjv.txt ]] || bash scripts/prepare_corpus.sh

COMMON=(--data_path data/kjv.txt --seq_len 64 --micro_batch 16 --eval_samples 128 --log_interval 10)
# 1. Dense pre-training.
if [[ ! -f $OUT/dense/model.safetensors ]]; then
  $FF train --model_preset llama-small --tokenizer_type byte --vocab_size 512 --d_model 128 --num_layers 4 \
      --num_heads 4 --num_kv_heads 2 --ffn_hidden 512 --num_experts 0 "${COMMON[@]}" --steps "$PRE_STEPS" \
      --lr 3e-3 --min_lr 3e-4 --warmup_steps 30 --eval_interval 100 --seed 1 --out_dir "$OUT/dense" \
      > "$OUT/dense.log" 2>&1
fi
tail -1 "$OUT/dense.log"
DENSE=$OUT/dense/model.safetensors

# Variants: NAME and the upcycling flags (empty: dense continue).
declare -A VAR=(
  [dense_continue]=""
  [e8k2_g1_softmax_topk]="--upcycle_experts 8 --upcycle_top_k 2 --upcycle_granularity 1 --upcycle_softmax_then_topk true"
  [e8k2_g1_topk_softmax]="--upcycle_experts 8 --upcycle_top_k 2 --upcycle_granularity 1 --upcycle_softmax_then_topk false"
  [e16k4_g4_softmax_topk]="--upcycle_experts 16 --upcycle_top_k 4 --upcycle_granularity 4 --upcycle_softmax_then_topk true"
  [e16k4_g4_topk_softmax]="--upcycle_experts 16 --upcycle_top_k 4 --upcycle_granularity 4 --upcycle_softmax_then_topk false"
  [e16k4_g4_naive]="--upcycle_experts 16 --upcycle_top_k 4 --upcycle_granularity 4 --upcycle_softmax_then_topk true --upcycle_virtual_groups false --upcycle_scale false"
)
ORDER="dense_continue e8k2_g1_softmax_topk e8k2_g1_topk_softmax e16k4_g4_softmax_topk e16k4_g4_topk_softmax e16k4_g4_naive"
# Continued training: the same steps, batch and schedule for every variant.
CONT=("${COMMON[@]}" --steps "$STEPS" --lr 1e-3 --min_lr 1e-4 --warmup_steps 10 --eval_interval 20)

cont() {  # DIR SEED FLAGS...
  local d=$1 s=$2
  shift 2
  if [[ ! -f $d/model.safetensors ]]; then
    rm -rf "$d"
    # shellcheck disable=SC2068
    $FF train --init_from "$DENSE" "${CONT[@]}" --seed "$s" --out_dir "$d" $@ > "$d.log" 2>&1
  fi
  echo "$(basename "$(dirname "$d")")/$(basename "$d"): $(grep -o 'validation loss before training [0-9.]*' "$d.log") | $(tail -1 "$d.log")"
}

for s in $SEEDS; do
  mkdir -p "$OUT/seed$s"
  echo "== seed $s"
  for v in $ORDER; do
    cont "$OUT/seed$s/$v" "$s" ${VAR[$v]}
  done
  for cf in 1 1.25 2; do
    cont "$OUT/seed$s/e8k2_g1_softmax_topk_cf$cf" "$s" ${VAR[e8k2_g1_softmax_topk]} --moe_capacity_factor "$cf"
  done
done

# 4. Offline upcycling and eval of the step-0 models (seed 1's router seed).
mkdir -p "$OUT/offline"
if [[ ! -s $OUT/offline/dense.eval ]]; then
  $FF eval --model "$DENSE" --data data/kjv.txt --part valid --seq_len 64 > "$OUT/offline/dense.eval" 2>&1
fi
for v in $ORDER; do
  [[ $v == dense_continue ]] && continue
  if [[ ! -s $OUT/offline/$v.eval ]]; then
    # shellcheck disable=SC2086
    $FF upcycle --init_from "$DENSE" --out "$OUT/offline/$v.safetensors" --seed 1 ${VAR[$v]} > "$OUT/offline/$v.log" 2>&1
    $FF eval --model "$OUT/offline/$v.safetensors" --data data/kjv.txt --part valid --seq_len 64 \
        > "$OUT/offline/$v.eval" 2>&1
  fi
  echo "offline $v: $(tail -1 "$OUT/offline/$v.eval")"
done
echo "$((SECONDS - start))" > "$OUT/last_run_seconds"
$PY scripts/experiments/upcycle_report.py "$OUT" "$SEEDS" "$FIG_DIR"
echo "done in $((SECONDS - start)) s; summary in $OUT/summary.md"
