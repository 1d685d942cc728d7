#!/usr/bin/env bash
# Minitron-SSM structured pruning + distillation at small scale (issue 15; specs/methods.md §3.9),
# on KJV with the default job's SentencePiece 4096 tokenizer.
#   teacher: nemotron-h-small (M-M-M*-M-, D 256, FFN 1024, attention 4/2 heads of 64) with the
#            Mamba2 mixer of §3.9's teacher: 16 heads x 16 channels, 4 groups, state 16
#            (5.34M parameters); TEACHER_STEPS steps at the default schedule (3e-3 peak, 50
#            warm-up steps, cosine to 3e-4), seed 100.
#   pruned to about half its parameters (`fivefold prune`, 128 calibration windows of KJV):
#     width: D 256 -> 192, FFN 1024 -> 384, Mamba2 heads 16 -> 8 (2 of 4 per group), 2.72M;
#            group-aware (default) and group-unaware (--group_aware false) from the same scores;
#     depth: D 256 -> 192 and the layers cut to the count (3-6) whose size is closest to width's;
#     ffn:   D 256 -> 192, FFN 1024 -> 192, Mamba2 whole: the §3.9 item 2 baseline at equal size;
#     channels: as width, but Mamba2 head channels 16 -> 8 with all 16 heads (the same d_inner 128:
#            §3.9 item 3, heads against head channels).
#   students, SEEDS seeds each, STEPS steps of 8 x 256 tokens (equal tokens for all):
#     aware_kd    width group-aware, KD from the teacher (forward KL, tau 1)
#     unaware_kd  width group-unaware, KD
#     aware_lm    width group-aware, plain LM loss
#     random_lm   width's architecture from random init, plain LM loss
#     depth_kd    depth, KD
#     ffn_kd      ffn, KD
#     channels_kd channels, KD
#   The retraining schedule is 6e-4 peak (1/5 of the teacher's, §3.7), 20 warm-up steps, cosine to
#   6e-5. random_lm is pre-training from scratch, so it gets the teacher's peak 3e-3 (cosine to
#   3e-4, 20 warm-up steps), its best known lr at this size. A seed fixes the data order (and
#   random_lm's init); validation covers the whole valid split (76 windows of 256) every 30 steps,
#   drawn per seed (so compare by paired differences).
# Then: `fivefold eval --part valid` of the teacher and every pruned model before retraining,
# greedy generation speed (GEN_REPS runs of 256 tokens, one thread; median) of the teacher and
# the seed-1 students of each architecture, and scripts/experiments/prune_kd_report.py, which
# writes OUT/summary.md and FIG_DIR/prune_kd_loss.svg. Runs whose outputs exist are skipped.
#   scripts/experiments/prune_kd.sh [OUT_DIR] [SEEDS]
# Environment: FF (binary), STEPS, TEACHER_STEPS, PAR (runs at a time, default 2), VARIANTS,
# GEN_REPS, FIG_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/prune_kd}
SEEDS=${2:-"1 2 3"}
FF=${FF:-./build/fivefold}
FIG_DIR=${FIG_DIR:-docs/figures}
STEPS=${STEPS:-150}
TEACHER_STEPS=${TEACHER_STEPS:-300}
PAR=${PAR:-2}
GEN_REPS=${GEN_REPS:-15}
VARIANTS=${VARIANTS:-"aware_kd unaware_kd aware_lm random_lm depth_kd ffn_kd channels_kd"}
export OMP_NUM_THREADS=1
mkdir -p "$OUT/pruned" "$OUT/eval" "$OUT/gen" "$FIG_DIR"
start=$SECONDS
[[ -s data/kjv.txt ]] || bash scripts/prepare_corpus.sh

ARCH=(--model_preset nemotron-h-small --mamba_num_heads 16 --mamba_head_dim 16 --mamba_groups 4 --mamba_state 16)
WIDTH=(--target_d_model 192 --target_ffn_hidden 384 --target_mamba_num_heads 8)
# width's pruned architecture, spelled out for the random init (head_dim stays 64 when D is cut)
WIDTH_ARCH=(--model_preset nemotron-h-small --d_model 192 --ffn_hidden 384 --head_dim 64 --mamba_num_heads 8
  --mamba_head_dim 16 --mamba_groups 4 --mamba_state 16)
EVAL=(--eval_interval 30 --eval_samples 128 --log_interval 10 --threads 1)
T=$OUT/teacher

params() {  # exact parameter count of a .safetensors file
  /usr/bin/python3 -c 'import json, math, struct, sys
f = open(sys.argv[1], "rb"); h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(sum(math.prod(v["shape"]) for k, v in h.items() if k != "__metadata__"))' "$1"
}

# 1. the teacher
if [[ ! -f $T/model.safetensors ]]; then
  rm -rf "$T"
  $FF train "${ARCH[@]}" --steps "$TEACHER_STEPS" --seed 100 --out_dir "$T" \
    --eval_interval 50 --eval_samples 128 --log_interval 10 --threads 1 > "$T.log" 2>&1
fi
echo "teacher: $(tail -1 "$T.log")  [$((SECONDS - start)) s]"

# 2. the pruned models
prune() {  # NAME ARGS...
  local name=$1; shift
  local p=$OUT/pruned/$name.safetensors
  if [[ ! -f $p ]]; then
    $FF prune --model "$T/model.safetensors" --data data/kjv.txt --calib_samples 128 --out "$p" "$@" \
      > "$OUT/pruned/$name.log" 2>&1
  fi
  echo "pruned $name: $(tail -1 "$OUT/pruned/$name.log") ($(params "$p") parameters)"
}
prune aware "${WIDTH[@]}"
prune unaware "${WIDTH[@]}" --group_aware false
prune ffn --target_d_model 192 --target_ffn_hidden 192
prune channels --target_d_model 192 --target_ffn_hidden 384 --target_mamba_head_dim 8
target=$(params "$OUT/pruned/aware.safetensors")
if [[ ! -f $OUT/pruned/depth.safetensors ]]; then
  best="" bestd=""
  for L in 3 4 5 6; do
    prune "depth$L" --target_d_model 192 --target_layers "$L" > /dev/null
    n=$(params "$OUT/pruned/depth$L.safetensors")
    dd=$(( n > target ? n - target : target - n ))
    if [[ -z $bestd ]] || (( dd < bestd )); then best=$L bestd=$dd; fi
  done
  cp "$OUT/pruned/depth$best.safetensors" "$OUT/pruned/depth.safetensors"
  cp "$OUT/pruned/depth$best.log" "$OUT/pruned/depth.log"
  cp "$OUT/pruned/depth$best.safetensors.scores.json" "$OUT/pruned/depth.safetensors.scores.json"
fi
echo "pruned depth: $(tail -1 "$OUT/pruned/depth.log") ($(params "$OUT/pruned/depth.safetensors") parameters)"
for m in aware unaware ffn channels depth; do
  [[ -s $OUT/eval/$m.txt ]] || $FF eval --model "$OUT/pruned/$m.safetensors" --data data/kjv.txt --part valid \
    > "$OUT/eval/$m.txt" 2>&1
done
[[ -s $OUT/eval/teacher.txt ]] || $FF eval --model "$T/model.safetensors" --data data/kjv.txt --part valid \
  > "$OUT/eval/teacher.txt" 2>&1
for m in teacher aware unaware ffn channels depth; do echo "eval $m: $(tail -1 "$OUT/eval/$m.txt")"; done

# 3. the students, PAR at a time
RETRAIN=(--steps "$STEPS" --lr 6e-4 --min_lr 6e-5 --warmup_steps 20)
KD=(--teacher "$T/model.safetensors" --kd_temperature 1)
student() {  # VARIANT SEED
  local v=$1 s=$2 d=$OUT/seed$2/$1 a
  case $v in
    aware_kd)   a=(--init_from "$OUT/pruned/aware.safetensors" "${RETRAIN[@]}" "${KD[@]}") ;;
    unaware_kd) a=(--init_from "$OUT/pruned/unaware.safetensors" "${RETRAIN[@]}" "${KD[@]}") ;;
    aware_lm)   a=(--init_from "$OUT/pruned/aware.safetensors" "${RETRAIN[@]}") ;;
    random_lm)  a=("${WIDTH_ARCH[@]}" --steps "$STEPS" --lr 3e-3 --min_lr 3e-4 --warmup_steps 20) ;;
    depth_kd)   a=(--init_from "$OUT/pruned/depth.safetensors" "${RETRAIN[@]}" "${KD[@]}") ;;
    ffn_kd)     a=(--init_from "$OUT/pruned/ffn.safetensors" "${RETRAIN[@]}" "${KD[@]}") ;;
    channels_kd) a=(--init_from "$OUT/pruned/channels.safetensors" "${RETRAIN[@]}" "${KD[@]}") ;;
    *) echo "unknown variant $v" >&2; return 1 ;;
  esac
  if [[ ! -f $d/model.safetensors ]]; then
    rm -rf "$d"
    mkdir -p "$(dirname "$d")"
    local t0=$SECONDS
    $FF train "${a[@]}" "${EVAL[@]}" --seed "$s" --out_dir "$d" > "$d.log" 2>&1 || { echo "FAILED: $d (see $d.log)"; return 1; }
    echo "$((SECONDS - t0))" > "$d.wall_s"
  fi
  echo "seed $s $v: $(tail -1 "$d.log")  [$((SECONDS - start)) s]"
}
fail=0
for s in $SEEDS; do
  for v in $VARIANTS; do
    while (( $(jobs -rp | wc -l) >= PAR )); do wait -n || fail=1; done
    student "$v" "$s" &
  done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || fail=1; done
(( fail == 0 )) || { echo "some runs failed"; exit 1; }

# 4. greedy generation speed, one thread, models taken in turn so that load changes hit all alike
s1=${SEEDS%% *}
GEN=(teacher:$T/model.safetensors)
for v in aware_kd depth_kd ffn_kd channels_kd; do
  [[ " $VARIANTS " == *" $v "* ]] && GEN+=("$v:$OUT/seed$s1/$v/model.safetensors")
done
if [[ "$(cat "$OUT/gen/done" 2>/dev/null)" != "$GEN_REPS ${GEN[*]}" ]]; then
  rm -f "$OUT"/gen/*.txt
  for ((r = 1; r <= GEN_REPS; r++)); do
    for g in "${GEN[@]}"; do
      $FF generate --model "${g#*:}" --prompt "And God said" --tokens 256 --temperature 0 --threads 1 \
        >> "$OUT/gen/${g%%:*}.txt" 2>&1
    done
  done
  echo "$GEN_REPS ${GEN[*]}" > "$OUT/gen/done"
fi
for g in "${GEN[@]}"; do echo "generate ${g%%:*}: $(grep -h 'tokens/s' "$OUT/gen/${g%%:*}.txt" | tail -1)"; done

echo "$((SECONDS - start))" > "$OUT/script_wall_s"
/usr/bin/python3 scripts/experiments/prune_kd_report.py "$OUT" "$FIG_DIR"
echo "done in $((SECONDS - start)) s"
