#!/usr/bin/env bash
# SPIN (specs/methods.md §6.6) and SteerLM (§6.5) on the hidden-oracle toy task of align_toy.sh
# (§6.8: prompts of 8 letters of "abcdefgh" and a colon, responses of 10 letters, a hidden oracle
# that counts the "a"s), for SEEDS seeds. The data are fixed across seeds (make_preferences.py's
# SFT data, spin_steer_data.py's SPIN and SteerLM data). Per seed:
#   0. the SFT model of align_toy.sh (align_common.sh's toy_sft: from scratch, uniformly random
#      responses, so it learns the format and no preference);
#   1. SPIN from it: SPIN_ITERS iterations (default 3) of `align spin` on 2,000 prompts whose
#      "real" responses have P("a") = 0.5 (oracle score 5 on average, against the SFT model's
#      1.25), 200 more held out; per iteration DPO (beta 0.2) for SPIN_STEPS steps of 16 pairs
#      (default 125, one epoch), lr SPIN_LR -> SPIN_MIN_LR (default 1e-4 -> 1e-5), against the
#      previous iteration's model. After
#      every iteration k (k = 0: the SFT model) the script samples the model on the 200 held-out
#      prompts and measures, with one-step lr-1e-12 `align dpo` passes whose first step's
#      metrics are exactly the implicit rewards beta * (log pi - log pi_ref) of the pairs:
#        own:   real vs the model's own held-out sample, rewards against the SFT model;
#        fixed: real vs the SFT model's held-out sample, rewards against the SFT model;
#        game:  real vs the previous model's held-out sample, rewards against the previous model
#               (what iteration k's DPO optimised, on held-out prompts);
#      and the oracle score of the model's own samples;
#   2. SteerLM from the same SFT model: an attribute model (`align steerlm attribute-model`, a
#      value head, AM_STEPS steps) on 2,000 responses labelled with the oracle's a_level =
#      min(4, count of "a" // 2) (each response draws its P("a") uniformly, so the count is
#      uniform on 0..10); `annotate` 4,000 other responses with it; attribute-conditioned SFT
#      (`align steerlm sft`, nemo template, 112 tokens, STEER_STEPS steps of 32, default 600, lr 3e-3
#      -> 3e-4; with fewer steps or a lower lr the model learns the responses' marginal first and
#      ignores or merges the requested levels); then one temperature-1 sample and one greedy
#      answer per held-out prompt (500) for each requested a_level 0..4 (`generate --chat_template
#      nemo --attributes a_level:V`), scored by the oracle.
# Then scripts/experiments/align_spin_steer_report.py writes OUT/summary.md and the figures
# docs/figures/align_spin.svg and align_steerlm.svg (FIG_DIR to change; SPIN_FIG names the SPIN
# figure). PARTS="spin" or "steer" runs one half. Steps whose outputs exist are skipped. About 7.5
# minutes a seed with 1 thread on the 2-core machine under a load of 3-5 (1,357 s for 3 seeds).
#   scripts/experiments/align_spin_steer.sh [OUT_DIR] [SEEDS]
# The smaller-step SPIN of docs/results.md (it trains the same SFT models again; copying
# runs/align_spin_steer/seed*/sft into its folder first skips that):
#   PARTS=spin SPIN_ITERS=5 SPIN_LR=3e-5 SPIN_MIN_LR=3e-6 SPIN_FIG=align_spin_lr3e-5.svg \
#       scripts/experiments/align_spin_steer.sh runs/align_spin_lr3e-5
# (more iterations on a finished run: delete OUT/seed*/spin/model.safetensors, and the
# iterations done are kept).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/align_spin_steer}
SEEDS=${2:-"1 2 3"}
FIG_DIR=${FIG_DIR:-docs/figures}
source scripts/experiments/align_common.sh  # FF, PY, MP, MODEL, sample, toy_sft
SD=scripts/experiments/spin_steer_data.py
SPIN_ITERS=${SPIN_ITERS:-3}
SPIN_STEPS=${SPIN_STEPS:-125}
SPIN_LR=${SPIN_LR:-1e-4}
SPIN_MIN_LR=${SPIN_MIN_LR:-1e-5}
PARTS=${PARTS:-"spin steer"}  # which halves to run
AM_STEPS=${AM_STEPS:-200}
STEER_STEPS=${STEER_STEPS:-600}
mkdir -p "$OUT" "$FIG_DIR"
start=$SECONDS

$PY $MP data "$OUT/data"  # align_toy.sh's data (seed 7)
$PY $SD data "$OUT/data"  # SPIN's and SteerLM's (seed 8)
H=$OUT/data/spin_heldout.jsonl

measure() {  # NAME POLICY REFERENCE GEN: implicit rewards of POLICY against REFERENCE on (real, GEN) pairs
  local f=$D/margins/$1
  if [[ ! -s $f.json ]]; then
    local n
    n=$($PY $SD margin_pairs "$H" "$4" "$f.pairs.jsonl")
    $FF align dpo --init_from "$2" --reference "$3" --data_path "$f.pairs.jsonl" --split 1,1,0 \
        --eval_samples $((2 * n)) --micro_batch $((2 * n)) --seq_len 32 --dpo_beta 0.2 --steps 1 --lr 1e-12 \
        --min_lr 1e-12 --warmup_steps 0 --eval_interval 0 --log_interval 1 --seed "$s" --out_dir "$f.run" > "$f.log" 2>&1
    $PY -c 'import json,sys; m=json.loads(open(sys.argv[1]).readline()); print(json.dumps({k: m[k] for k in ("margin", "reward_chosen", "reward_rejected", "accuracy", "loss")}))' \
        "$f.run/metrics.jsonl" > "$f.json"
    rm -rf "$f.run"
  fi
}

for s in $SEEDS; do
  D=$OUT/seed$s
  mkdir -p "$D/margins"
  echo "== seed $s"
  toy_sft "$s" "$D"
  SFT=$D/sft/model.safetensors

  # 1. SPIN.
  if [[ " $PARTS " == *" spin "* ]]; then
  if [[ ! -f $D/spin/model.safetensors ]]; then
    $FF align spin --init_from "$SFT" --data_format sft --chat_template none --data_path "$OUT/data/spin.jsonl" \
        --split 2000,200,0 --eval_samples 400 --seq_len 32 --micro_batch 32 --spin_iterations "$SPIN_ITERS" \
        --spin_max_new_tokens 16 --spin_temperature 1 --dpo_beta 0.2 --steps "$SPIN_STEPS" --lr "$SPIN_LR" \
        --min_lr "$SPIN_MIN_LR" --warmup_steps 10 --eval_interval 25 --log_interval 25 --seed "$s" --out_dir "$D/spin" \
        > "$D/spin.log" 2>&1
  fi
  grep "^SPIN iteration" "$D/spin.log" || true
  M=("$SFT")
  for k in $(seq 1 "$SPIN_ITERS"); do M+=("$D/spin/iter-$k/model.safetensors"); done
  for k in $(seq 0 "$SPIN_ITERS"); do
    sample "${M[$k]}" "$H" $((1000 * s + 50)) "$D/spin_eval.$k.jsonl"
    $PY $SD score "$D/spin_eval.$k.jsonl" > "$D/spin_eval.$k.score.json"
    measure own.$k "${M[$k]}" "$SFT" "$D/spin_eval.$k.jsonl"
    measure fixed.$k "${M[$k]}" "$SFT" "$D/spin_eval.0.jsonl"
    if ((k > 0)); then measure game.$k "${M[$k]}" "${M[$((k - 1))]}" "$D/spin_eval.$((k - 1)).jsonl"; fi
    $PY -c 'import json,sys; o,f,sc=(json.load(open(p)) for p in sys.argv[2:5]); print("SPIN model %s: oracle score of its samples %.2f | margin real vs own sample %.2f | real vs SFT sample %.2f (vs SFT)" % (sys.argv[1], sc["score"], o["margin"], f["margin"]))' \
        "$k" "$D/margins/own.$k.json" "$D/margins/fixed.$k.json" "$D/spin_eval.$k.score.json"
  done
  fi

  # 2. SteerLM: attribute model, annotation, attribute-conditioned SFT, steered generation.
  [[ " $PARTS " == *" steer "* ]] || continue
  if [[ ! -f $D/am/model.safetensors ]]; then
    $FF align steerlm attribute-model --init_from "$SFT" --steerlm_attributes a_level --chat_template none \
        --data_path "$OUT/data/steer_rated.jsonl" --split 90,10,0 --eval_samples 200 --seq_len 32 --micro_batch 32 \
        --steps "$AM_STEPS" --lr 1e-3 --min_lr 1e-4 --warmup_steps 20 --eval_interval 20 --log_interval 50 \
        --seed "$s" --out_dir "$D/am" > "$D/am.log" 2>&1
  fi
  tail -1 "$D/am.log"
  if [[ ! -s $D/steer_sft.annotated.jsonl ]]; then
    $FF align steerlm annotate --model "$D/am/model.safetensors" --data_path "$OUT/data/steer_sft.jsonl" \
        --output "$D/steer_sft.annotated.jsonl" --micro_batch 64 > "$D/annotate.log" 2>&1
  fi
  $PY $SD annotation "$D/steer_sft.annotated.jsonl" > "$D/annotation.json"
  $PY -c 'import json,sys; a=json.load(open(sys.argv[1])); print("annotation: exact %.3f, mean abs error %.3f" % (a["exact"], a["mae"]))' "$D/annotation.json"
  if [[ ! -f $D/steer/model.safetensors ]]; then
    $FF align steerlm sft --init_from "$SFT" --steerlm_attributes a_level --chat_template nemo \
        --data_path "$D/steer_sft.annotated.jsonl" --split 95,5,0 --seq_len 112 --micro_batch 32 --steps "$STEER_STEPS" \
        --lr 3e-3 --min_lr 3e-4 --warmup_steps 20 --eval_interval 100 --log_interval 100 --seed "$s" \
        --out_dir "$D/steer" > "$D/steer.log" 2>&1
  fi
  tail -1 "$D/steer.log"
  for v in 0 1 2 3 4; do
    sample "$D/steer/model.safetensors" "$OUT/data/heldout_prompts.jsonl" $((1000 * s + 60)) "$D/steer_eval.$v.jsonl" \
        --chat_template nemo --attributes a_level:$v
    TEMPERATURE=0 sample "$D/steer/model.safetensors" "$OUT/data/heldout_prompts.jsonl" $((1000 * s + 60)) \
        "$D/steer_greedy.$v.jsonl" --chat_template nemo --attributes a_level:$v
    $PY $SD score "$D/steer_eval.$v.jsonl" > "$D/steer_eval.$v.score.json"
    $PY $SD score "$D/steer_greedy.$v.jsonl" > "$D/steer_greedy.$v.score.json"
    $PY -c 'import json,sys; t,g=(json.load(open(p)) for p in sys.argv[2:4]); print("SteerLM a_level:%s -> oracle score %.2f (greedy %.2f), well-formed %.3f, distinct %.3f" % (sys.argv[1], t["score"], g["score"], t["well_formed"], t["distinct"]))' \
        "$v" "$D/steer_eval.$v.score.json" "$D/steer_greedy.$v.score.json"
  done
done
echo "$((SECONDS - start))" > "$OUT/last_run_seconds"
$PY scripts/experiments/align_spin_steer_report.py "$OUT" "$SEEDS" "$FIG_DIR"
echo "done in $((SECONDS - start)) s; summary in $OUT/summary.md"
