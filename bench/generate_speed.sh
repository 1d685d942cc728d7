#!/usr/bin/env bash
# Generation speed on one model: `fivefold generate` with the KV cache, fivefold with
# --kv_cache false (full recompute of the context at every token), and the PyTorch peer
# (bench/torch_generate.py, a KV cache of its own), greedy, batch 1 and batch 8 (copies of one
# prompt, decoded together), REPEATS runs each; prints the median tokens/s of each.
# First it checks that the three decode alike: the peer's cached tokens equal its own full
# recomputation (--check) and fivefold's greedy tokens (--expect).
#   bench/generate_speed.sh [MODEL_FILE]
# MODEL_FILE: a fivefold model file with the byte tokenizer and seq_len >= 16 + TOKENS - 1; without
# it a small dense model (d_model 128, 2 layers, GQA 4/2, seq_len 256) is trained for a few seconds
# on the head of data/kjv.txt. Everything goes to a temp folder, removed at exit.
# Environment: THREADS (default 2), REPEATS (5), TOKENS (200), FIVEFOLD (build/fivefold),
# PYTHON (/usr/bin/python3: the one with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-5}
TOKENS=${TOKENS:-200}
FIVEFOLD=${FIVEFOLD:-./build/fivefold}
PYTHON=${PYTHON:-/usr/bin/python3}
PROMPT="And God said, Le"  # 16 bytes: prompt + TOKENS stays inside seq_len, so no context restart
WORK=$(mktemp -d /tmp/generate_speed.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

MODEL=${1:-}
if [[ -z $MODEL ]]; then
  # fivefold tokenises a text corpus into files beside it, so train on a copy in the temp folder.
  head -c 1000000 data/kjv.txt > "$WORK/kjv.txt"
  MODEL=$WORK/model/model.safetensors
  TRAIN=("$FIVEFOLD" train --model_preset llama-small --d_model 128 --num_layers 2 --num_heads 4 --num_kv_heads 2
         --ffn_hidden 256 --seq_len 256 --tokenizer_type byte --vocab_size 264 --data_path "$WORK/kjv.txt"
         --steps 100 --micro_batch 4 --eval_interval 0 --eval_samples 4 --log_interval 1000 --peak_tflops 1
         --out_dir "$WORK/model")
  echo "training the test model: $(printf '%q ' "${TRAIN[@]}")"
  OMP_NUM_THREADS=$THREADS "${TRAIN[@]}" > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log"; exit 1; }
  tail -n 1 "$WORK/train.log"
fi

# The model's seq_len and train.threads, from the model file's header (fivefold generate takes its
# thread count from train.threads when that is > 0, over OMP_NUM_THREADS).
read -r SEQ_LEN MODEL_THREADS < <("$PYTHON" - "$MODEL" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    cfg = json.loads(json.loads(f.read(n))["__metadata__"]["fivefold_config"])
print(cfg["model"]["seq_len"], cfg["train"]["threads"])
EOF
)
if (( ${#PROMPT} + TOKENS - 1 > SEQ_LEN )); then
  echo "generate_speed: prompt (${#PROMPT} bytes) + $TOKENS tokens - 1 exceed the model's seq_len $SEQ_LEN; set TOKENS" >&2
  exit 1
fi
if (( MODEL_THREADS > 0 && MODEL_THREADS != THREADS )); then
  echo "note: the model file says train.threads = $MODEL_THREADS, which fivefold generate uses instead of $THREADS"
fi

# The load average tells whether other work shared the cores (2-thread runs slow down many-fold then).
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg); $THREADS threads each"
echo "model: $MODEL (seq_len $SEQ_LEN); prompt \"$PROMPT\", $TOKENS new tokens, greedy"
for _ in $(seq 8); do printf '{"prompt": "%s"}\n' "$PROMPT"; done > "$WORK/prompts8.jsonl"
FF=(env OMP_NUM_THREADS="$THREADS" "$FIVEFOLD" generate --model "$MODEL" --tokens "$TOKENS" --temperature 0)
PEER=("$PYTHON" bench/torch_generate.py --model "$MODEL" --prompt "$PROMPT" --tokens "$TOKENS" --threads "$THREADS")
echo "fivefold: $(printf '%q ' "${FF[@]}")[--kv_cache false] (--prompt $(printf '%q' "$PROMPT") | --prompts FILE of 8 such lines)"
echo "peer:     $(printf '%q ' "${PEER[@]}")--batch 1|8 --repeats $REPEATS (one untimed warm-up run first)"

echo "-- agreement (batch 1)"
"${FF[@]}" --prompt "$PROMPT" > "$WORK/fivefold.txt" 2> "$WORK/fivefold.err" || { cat "$WORK/fivefold.err" >&2; exit 1; }
MATCH=yes
if ! "${PEER[@]}" --repeats 1 --check --expect "$WORK/fivefold.txt" > "$WORK/agree.log" 2>&1; then
  # A disagreement is reported and the timing goes on; any other failure (a model the peer cannot
  # run) ends the script.
  grep -qE 'DIFFER|AssertionError: check' "$WORK/agree.log" || { cat "$WORK/agree.log" >&2; exit 1; }
  MATCH=NO
fi
grep -E '^(check|expect|AssertionError)' "$WORK/agree.log"

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }

# Median tokens/s of REPEATS fivefold runs; the rate is on the "generated ... tokens/s" line of stderr.
fivefold_rate() {
  for _ in $(seq "$REPEATS"); do
    "${FF[@]}" "$@" 2>&1 > /dev/null | sed -n 's/.*: \([0-9.]*\) tokens\/s.*/\1/p'
  done | median
}

echo "-- median tokens/s over $REPEATS runs (new tokens of the whole batch per second)"
printf '%-6s %14s %18s %14s %14s\n' batch "fivefold KV" "fivefold no-cache" "PyTorch KV" "fivefold/PyTorch"
for b in 1 8; do
  if (( b == 1 )); then INPUT=(--prompt "$PROMPT"); else INPUT=(--prompts "$WORK/prompts8.jsonl"); fi
  kv=$(fivefold_rate "${INPUT[@]}")
  full=$(fivefold_rate "${INPUT[@]}" --kv_cache false)
  peer=$("${PEER[@]}" --batch "$b" --repeats "$REPEATS" | sed -n 's/^result: \([0-9.]*\) tokens\/s.*/\1/p')
  printf '%-6s %14.1f %18.1f %14.1f %14.2f\n' "$b" "$kv" "$full" "$peer" "$(awk -v a="$kv" -v p="$peer" 'BEGIN {print a / p}')"
done
echo "greedy tokens: peer cache = peer recompute = fivefold: $MATCH"
