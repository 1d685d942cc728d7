#!/usr/bin/env bash
# Expert load under each load-balancing loss (issue 21): the moe-tiny preset (4 MoE layers of 8
# experts, top-2, softmax router, 12.6M parameters) on KJV, with model.moe_load_balancing =
# aux_loss (per micro-batch), seq_aux_loss (per sequence), global_aux_loss (over the step's
# micro-batches and replicas) and none, all at moe_aux_loss_coeff 0.01, for SEEDS seeds.
# Each step is 4 micro-batches of 2 sequences of 256 tokens (grad_accum 4: 2,048 tokens a step),
# so that the three losses balance over different sets: 512 tokens, 256 tokens, and the step's
# 2,048 tokens so far. STEPS steps at the default lr schedule, one validation pass at the end.
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

COMMON=(--model_preset moe-tiny --steps "$STEPS" --micro_batch 2 --grad_accum 4 --eval_interval 0 --eval_samples 64
        --log_interval 10 --moe_aux_loss_coeff 0.01)
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
