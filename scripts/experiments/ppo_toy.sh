#!/usr/bin/env bash
# RLHF with PPO on the hidden-oracle toy task of scripts/experiments/align_toy.sh
# (specs/methods.md §6.4, §6.8; issue 17). Claim under test: "PPO raises the reward model's score
# while the KL to the reference stays bounded, and a larger beta gives a smaller KL and a smaller
# gain". Per seed, from that seed's SFT model (actor init and frozen reference) and reward model
# (the critic's init too), for each beta of the per-token KL penalty:
#   1. `align ppo`, ITERS iterations of 64 temperature-1 rollouts (at most 12 new tokens) from
#      the 2,000 training prompts; 2 critic-only warm-up iterations; actor lr 2e-4 -> 2e-5,
#      critic lr 1e-3; metrics.jsonl has the RM score and the KL estimate per iteration;
#   2. one temperature-1 sample per held-out prompt (500) from the final actor, with the same
#      sampling seed as align_toy.sh's SFT sample eval.sft.jsonl, scored by the hidden oracle
#      against it (make_preferences.py compare: win rate, mean score, well-formed, distinct).
# BETAS use the default absolute per-token KL estimate |logp - logp_ref| in the rewards (§6.4,
# use_absolute_kl); SIGNED_BETAS run again with the signed estimate logp - logp_ref
# (--ppo_absolute_kl false), named betaB_signed.
# Then scripts/experiments/ppo_toy_report.py writes OUT/summary.md and the figures
# FIG_DIR/ppo_{reward,kl}.svg. The SFT and reward models come from ALIGN_DIR (align_toy.sh's
# output); align_toy.sh runs first only if one of them is missing. Runs whose outputs exist are
# skipped. 31-61 s per run on 2 busy cores (15 runs and their samples: about 12 minutes).
#   scripts/experiments/ppo_toy.sh [ALIGN_DIR] [OUT_DIR] [SEEDS] [BETAS] [SIGNED_BETAS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ALIGN=${1:-runs/align_toy}
OUT=${2:-runs/ppo_toy}
SEEDS=${3:-"1 2 3"}
BETAS=${4:-"0.02 0.2 1.0"}
SIGNED_BETAS=${5-"0.2 1.0"}
ITERS=${ITERS:-60}
FF=${FF:-./build/fivefold}
PY=/usr/bin/python3
FIG_DIR=${FIG_DIR:-docs/figures}
MP=scripts/experiments/make_preferences.py
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$FIG_DIR"
start=$SECONDS

for s in $SEEDS; do
  if [[ ! -f $ALIGN/seed$s/sft/model.safetensors || ! -f $ALIGN/seed$s/rm/model.safetensors ]]; then
    FF=$FF FIG_DIR=$FIG_DIR bash scripts/experiments/align_toy.sh "$ALIGN" "$SEEDS"
    break
  fi
done

sample() {  # MODEL PROMPTS SEED OUT_FILE: one temperature-1 sample per prompt (as align_toy.sh)
  if [[ ! -s $4 ]]; then
    $FF generate --model "$1" --prompts "$2" --output jsonl --temperature 1 --top_k 0 --seed "$3" --tokens 16 \
        > "$4.tmp" 2> "$4.log"
    mv "$4.tmp" "$4"
  fi
}

for s in $SEEDS; do
  A=$ALIGN/seed$s
  D=$OUT/seed$s
  mkdir -p "$D"
  echo "== seed $s"
  sample "$A/sft/model.safetensors" "$ALIGN/data/heldout_prompts.jsonl" $((1000 * s + 99)) "$A/eval.sft.jsonl"
  for cond in $BETAS $(for b in $SIGNED_BETAS; do echo "${b}_signed"; done); do
    b=${cond%_signed} name=beta$cond abs=true
    [[ $cond == *_signed ]] && abs=false
    if [[ ! -f $D/$name/model.safetensors ]]; then
      t0=$SECONDS
      $FF align ppo --init_from "$A/sft/model.safetensors" --reward_model "$A/rm/model.safetensors" \
          --data_path "$ALIGN/data/train_prompts.jsonl" --steps "$ITERS" --ppo_rollout_prompts 64 --micro_batch 16 \
          --ppo_max_new_tokens 12 --lr 2e-4 --min_lr 2e-5 --ppo_critic_lr 1e-3 --warmup_steps 0 \
          --ppo_critic_warmup 2 --ppo_kl_beta "$b" --ppo_absolute_kl $abs --seed "$s" --out_dir "$D/$name" > "$D/$name.log" 2>&1
      echo "$((SECONDS - t0))" > "$D/$name.seconds"
    fi
    tail -2 "$D/$name.log" | head -1
    sample "$D/$name/model.safetensors" "$ALIGN/data/heldout_prompts.jsonl" $((1000 * s + 99)) "$D/eval.$name.jsonl"
    $PY $MP compare "$A/eval.sft.jsonl" "$D/eval.$name.jsonl" > "$D/compare.$name.json"
    $PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-10s win rate over SFT %.3f | oracle score SFT %.2f -> %.2f | well-formed %.2f | distinct %.2f" % (sys.argv[2], r["win_rate"], r["base_score"], r["new_score"], r["new_well_formed"], r["new_distinct"]))' \
        "$D/compare.$name.json" "$name"
  done
done
echo "$((SECONDS - start))" > "$OUT/last_run_seconds"
$PY scripts/experiments/ppo_toy_report.py "$OUT" "$SEEDS" "$BETAS" "$SIGNED_BETAS" "$FIG_DIR"
echo "done in $((SECONDS - start)) s; summary in $OUT/summary.md"
