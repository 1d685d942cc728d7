#!/usr/bin/env bash
# Reward model and DPO on a hidden-oracle toy task (specs/methods.md §6.2, §6.3, §6.8), for
# SEEDS seeds. Prompts are 8 random letters of "abcdefgh" and a colon; responses are 10 letters;
# a hidden oracle (scripts/experiments/make_preferences.py), never shown to a model, scores a
# response by its number of "a"s. Per seed:
#   1. SFT a small model from scratch on prompts paired with uniformly random responses (it
#      learns the format, no preference);
#   2. sample 4 responses per prompt from it (temperature 1) for 2,000 training prompts and 500
#      held-out prompts, score them with the oracle, and pair the best with the worst (ties
#      dropped);
#   3. train a Bradley-Terry reward model from the SFT model on the training pairs, reporting
#      pairwise accuracy on the held-out pairs (the trainer's valid split);
#   4. DPO (beta 0.2, 120 steps, about one epoch, lr 1e-4 -> 1e-5) from the SFT model, the SFT
#      model as reference; IPO with the same settings; and an over-trained DPO (200 steps at a
#      constant lr 3e-4) to show what happens far from the reference;
#   5. sample one response per held-out prompt from the SFT model and from each aligned model,
#      and report the oracle win rate over SFT and the mean oracle score.
# Then scripts/experiments/align_toy_report.py writes OUT/summary.md (per-seed table, mean,
# min-max) and the figures docs/figures/align_toy_{rm,dpo,scores}.svg (FIG_DIR to change).
# Scale: byte tokenizer, dense model d_model 128, 4 layers, 0.86M parameters, sequences of 32
# tokens; SFT 300 steps of 32 sequences; about 1,900 training and 480 held-out pairs per seed.
# About 3.5 minutes a seed on 2 idle cores (15 minutes for 3 seeds on a busy machine). Steps whose
# outputs exist are skipped.
#   scripts/experiments/align_toy.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/align_toy}
SEEDS=${2:-"1 2 3"}
FIG_DIR=${FIG_DIR:-docs/figures}
source scripts/experiments/align_common.sh  # FF, PY, MP, MODEL, sample, toy_sft
mkdir -p "$OUT" "$FIG_DIR"
start=$SECONDS

$PY $MP data "$OUT/data"  # fixed across seeds (data seed 7)

for s in $SEEDS; do
  D=$OUT/seed$s
  mkdir -p "$D"
  echo "== seed $s"
  # 1. SFT from scratch.
  toy_sft "$s" "$D"
  # 2. Four samples per prompt, scored by the oracle, best vs worst.
  tr=() he=()
  for k in 1 2 3 4; do
    sample "$D/sft/model.safetensors" "$OUT/data/train_prompts.jsonl" $((1000 * s + k)) "$D/samples.train$k.jsonl"
    sample "$D/sft/model.safetensors" "$OUT/data/heldout_prompts.jsonl" $((1000 * s + 10 + k)) "$D/samples.heldout$k.jsonl"
    tr+=("$D/samples.train$k.jsonl") he+=("$D/samples.heldout$k.jsonl")
  done
  [[ -s $D/pairs.counts ]] || $PY $MP pairs "$D/pairs.jsonl" "${tr[@]}" -- "${he[@]}" > "$D/pairs.counts"
  read -r NTR NHE < "$D/pairs.counts"
  echo "pairs: $NTR train, $NHE held-out"
  PAIRS=(--data_path "$D/pairs.jsonl" --split "$NTR,$NHE,0" --eval_samples $((2 * NHE)) --seq_len 32 --micro_batch 32
         --seed "$s" --log_interval 50)
  # 3. Reward model (value head on the SFT backbone), held-out pairwise accuracy.
  if [[ ! -f $D/rm/model.safetensors ]]; then
    $FF align rm --init_from "$D/sft/model.safetensors" "${PAIRS[@]}" --steps 200 --lr 1e-3 --min_lr 1e-4 \
        --warmup_steps 20 --eval_interval 20 --out_dir "$D/rm" > "$D/rm.log" 2>&1
  fi
  tail -1 "$D/rm.log"
  # 4. DPO, IPO, over-trained DPO; the reference is the init (SFT) model.
  align() {  # NAME FLAGS...
    local name=$1
    shift
    if [[ ! -f $D/$name/model.safetensors ]]; then
      $FF align dpo --init_from "$D/sft/model.safetensors" "${PAIRS[@]}" --dpo_beta 0.2 --warmup_steps 10 \
          --eval_interval 20 --out_dir "$D/$name" "$@" > "$D/$name.log" 2>&1
    fi
    tail -1 "$D/$name.log"
  }
  align dpo --steps 120 --lr 1e-4 --min_lr 1e-5
  align ipo --objective ipo --steps 120 --lr 1e-4 --min_lr 1e-5
  align dpo_long --steps 200 --lr 3e-4 --min_lr 3e-4
  # 5. Oracle win rate over SFT on the held-out prompts (the same sampling seed for every model).
  sample "$D/sft/model.safetensors" "$OUT/data/heldout_prompts.jsonl" $((1000 * s + 99)) "$D/eval.sft.jsonl"
  for m in dpo ipo dpo_long; do
    sample "$D/$m/model.safetensors" "$OUT/data/heldout_prompts.jsonl" $((1000 * s + 99)) "$D/eval.$m.jsonl"
    $PY $MP compare "$D/eval.sft.jsonl" "$D/eval.$m.jsonl" > "$D/compare.$m.json"
    $PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-8s win rate over SFT %.3f | oracle score SFT %.2f -> %.2f | well-formed %.2f | distinct %.2f" % (sys.argv[2], r["win_rate"], r["base_score"], r["new_score"], r["new_well_formed"], r["new_distinct"]))' \
        "$D/compare.$m.json" "$m"
  done
done
echo "$((SECONDS - start))" > "$OUT/last_run_seconds"
$PY scripts/experiments/align_toy_report.py "$OUT" "$SEEDS" "$FIG_DIR"
echo "done in $((SECONDS - start)) s; summary in $OUT/summary.md"
