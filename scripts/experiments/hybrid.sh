#!/usr/bin/env bash
# Nemotron-H-style hybrid against a dense transformer at equal parameters and equal tokens
# (issue 13), for SEEDS seeds, on KJV with the default job's SentencePiece 4096 tokenizer.
#   hybrid: the nemotron-h-small preset, pattern M-M-M*-M- (4 Mamba2 layers of 8 heads x 64,
#           2 groups, state 32, chunk 64; 1 attention layer without RoPE; 4 squared-ReLU MLPs of
#           1024), 6.12M parameters;
#   dense:  the same width, heads and vocabulary as 5 Llama-style blocks (*-, RoPE, SwiGLU MLPs
#           of 792), 6.12M parameters.
# Both: sequences of 256 tokens, 8 a step (2,048 tokens), STEPS steps, the default lr schedule
# (3e-3 peak, 50 warm-up steps, cosine to 3e-4), validation on 128 held-out sequences every 50
# steps. Then scripts/experiments/hybrid_report.py writes OUT/summary.md and
# docs/figures/hybrid_loss.svg (FIG_DIR to change). Runs whose outputs exist are skipped.
#   scripts/experiments/hybrid.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/hybrid}
SEEDS=${2:-"1 2 3"}
FF=${FF:-./build/fivefold}
FIG_DIR=${FIG_DIR:-docs/figures}
STEPS=${STEPS:-400}
mkdir -p "$OUT" "$FIG_DIR"
start=$SECONDS
[[ -s data/kjv.txt ]] || bash scripts/prepare_corpus.sh

COMMON=(--model_preset nemotron-h-small --steps "$STEPS" --eval_interval 50 --eval_samples 128 --log_interval 10)
declare -A VAR=(
  [hybrid]=""
  [dense]="--layer_pattern *-*-*-*-*- --activation swiglu --position_embedding rope --ffn_hidden 792"
)
for s in $SEEDS; do
  for v in hybrid dense; do
    d=$OUT/seed$s/$v
    if [[ ! -f $d/model.safetensors ]]; then
      rm -rf "$d"
      mkdir -p "$(dirname "$d")"
      # shellcheck disable=SC2086
      $FF train "${COMMON[@]}" --seed "$s" --out_dir "$d" ${VAR[$v]} > "$d.log" 2>&1
    fi
    echo "seed $s $v: $(tail -1 "$d.log")"
  done
done
/usr/bin/python3 scripts/experiments/hybrid_report.py "$OUT" "$FIG_DIR"
echo "done in $((SECONDS - start)) s"
