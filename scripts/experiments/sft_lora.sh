#!/usr/bin/env bash
# End to end, as a user would (issue: start from a pretrained model): pre-train a small dense
# model on KJV, export it to a Hugging Face folder, then fine-tune that folder with LoRA on a
# small instruction set (scripts/experiments/make_instructions.py) for SEEDS seeds, and report
# per seed: the held-out response loss before and after (the trainer's validation loss on the
# last 10% of the examples, loss on the responses only), and of greedy generations for the 90
# held-out prompts, the fraction that follow the format ("Answer: ... .") and the fraction that
# repeat the words exactly. Also the same SFT with the model's own weights trained (no LoRA) for
# comparison. Scale: d_model 256, 4 layers, 300 pre-training steps of 8 x 256 tokens; SFT 150
# steps of 16 x 128 tokens. About 10 minutes on 2 cores.
#   scripts/experiments/sft_lora.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/sft_lora}
SEEDS=${2:-"1 2 3"}
FF=./build/fivefold
PY=/usr/bin/python3
mkdir -p "$OUT"
bash scripts/prepare_corpus.sh > /dev/null

# 1. Pre-train (a SentencePiece tokenizer of 2048 pieces trained on first use, kept in OUT).
if [[ ! -f $OUT/base/model.safetensors ]]; then
  $FF train --model_preset llama-small --vocab_size 2048 --d_model 256 --num_layers 4 --num_heads 4 --num_kv_heads 2 \
      --ffn_hidden 688 --seq_len 256 --steps 300 --micro_batch 8 --lr 2e-3 --warmup_steps 30 --eval_interval 100 \
      --tokenizer_path "$OUT/kjv-sp2048.model" --out_dir "$OUT/base" --log_interval 50 | tail -3
fi
# 2. Export to Hugging Face (the tokenizer travels as tokenizer.model).
$FF convert --to hf --checkpoint "$OUT/base/model.safetensors" --out "$OUT/base-hf" | tail -1
# 3. The instruction set.
$PY scripts/experiments/make_instructions.py data/kjv.txt "$OUT/data"

generations() {  # NAME MODEL: greedy answers to the held-out prompts, scored
  local name=$1 model=$2
  $FF generate --model "$model" --prompts "$OUT/data/heldout_prompts.jsonl" --chat_template nemo \
      --temperature 0 --tokens 24 --stop $'\n' --output jsonl > "$OUT/$name.generations.jsonl" 2> "$OUT/$name.generate.log"
  $PY - "$OUT/$name" <<'PY'
import json, os, re, sys
run = sys.argv[1]
before = after = "-"
if os.path.exists(run + ".log"):
    before, after = re.search(r"validation loss ([0-9.]+) -> ([0-9.]+)", open(run + ".log").read()).groups()
gens = [json.loads(l) for l in open(run + ".generations.jsonl")]
want = [json.loads(l)["expected"] for l in open(run.rsplit("/", 1)[0] + "/data/heldout_prompts.jsonl")]
fmt = sum(bool(re.fullmatch(r"Answer: [a-z ]+\.", g["text"].strip())) for g in gens) / len(gens)
exact = sum(g["text"].strip() == w for g, w in zip(gens, want)) / len(gens)
print("%-14s held-out response loss %s -> %s | format %.2f | exact %.2f | e.g. %r" %
      (run.rsplit("/", 1)[1], before, after, fmt, exact, gens[0]["text"]))
PY
}

sft() {  # NAME SEED EXTRA_FLAGS...
  local name=$1 seed=$2
  shift 2
  $FF train --init_from "$OUT/base-hf" --data_format sft --chat_template nemo --data_path "$OUT/data/sft.jsonl" \
      --split 90,10,0 --seq_len 128 --micro_batch 16 --steps 150 --warmup_steps 10 --eval_interval 50 \
      --eval_samples 96 --seed "$seed" --out_dir "$OUT/$name" --log_interval 50 "$@" > "$OUT/$name.log"
  generations "$name" "$OUT/$name/model.safetensors"
}
generations base "$OUT/base-hf"  # the pre-trained model, prompted with the same template
for s in $SEEDS; do sft "lora-seed$s" "$s" --lr 2e-3 --lora_rank 16 --lora_alpha 32 \
    --lora_targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; done
for s in $SEEDS; do sft "full-seed$s" "$s" --lr 5e-4; done
