#!/usr/bin/env bash
# Expert load under each load-balancing loss (issue 21): the moe-tiny preset narrowed to d_model
# 128 and experts of 256 (4 blocks of attention + MoE, 8 experts top-2, softmax router,
# SentencePiece 4096, sequences of 256) on KJV, with model.moe_load_balancing = aux_loss (per
# micro-batch), seq_aux_loss (per sequence), global_aux_loss (over the step's micro-batches and
# replicas) and none, all at moe_aux_loss_coeff 0.01, for SEEDS seeds. Each step is 4
# micro-batches of 2 sequences (grad_accum 4: 2,048 tokens a step), so that the three losses
# balance over different sets: the micro-batch's 512 tokens, each sequence's 256, and the step's
# tokens so far (512 .. 2,048). STEPS steps at the default lr schedule, one validation pass at the
# end. One thread per run (--threads 1: on 2 cores shared with other work, two OpenMP threads
# spin against the other jobs and ran 5-20x slower); about a minute a run, 12 runs.
# Then scripts/experiments/routing_balance_report.py writes OUT/summary.md: per type the max /
# mean rows per expert of each MoE layer (the mean over the last 20 steps), the losses, with the
# seed spread. Runs whose outputs exist are skipped.
#   scripts/experiments/routing_balance.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/routing_balance}
SEEDS=${2:-"1 2 3"}
FF=${FF:-./build/fivefold}
STEPS=${STEPS:-100}
mkdir -p "$OUT"
start=$SECONDS
[[ -s data/kjv.txt ]] || bash scripts/prepare_corpus.sh

COMMON=(--model_preset moe-tiny --d_model 128 --moe_ffn_hidden 256 --steps "$STEPS" --micro_batch 2 --grad_accum 4
        --eval_interval 0 --eval_samples 64 --log_interval 10 --moe_aux_loss_coeff 0.01 --threads 1)
for s in $SEEDS; do
  for t in aux_loss seq_aux_loss global_aux_loss none; do
    d=$OUT/seed$s/$t
    if [[ ! -f $d/model.safetensors ]]; then
      rm -rf "$d"
      mkdir -p "$(dirname "$d")"
      $FF train "${COMMON[@]}" --moe_load_balancing "$t" --seed "$s" --out_dir "$d" > "$d.log" 2>&1
    fi
    echo "seed $s $t: $(tail -1 "$d.log")"
  done
done
/usr/bin/python3 scripts/experiments/routing_balance_report.py "$OUT"
echo "done in $((SECONDS - start)) s"
