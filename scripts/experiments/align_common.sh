# Shared by the hidden-oracle toy experiments (scripts/experiments/align_toy.sh and
# align_spin_steer.sh); sourced from the repository root. Needs OUT (the run folder, with the
# task data in OUT/data from make_preferences.py) and defines FF, PY, MP, MODEL, sample and toy_sft.
FF=${FF:-./build/fivefold}
PY=/usr/bin/python3
MP=scripts/experiments/make_preferences.py
# The toy model: byte tokenizer, dense d_model 128, 4 layers, 0.86M parameters, 32 tokens.
MODEL=(--model_preset llama-small --tokenizer_type byte --vocab_size 512 --d_model 128 --num_layers 4
       --num_heads 4 --num_kv_heads 2 --ffn_hidden 344 --seq_len 32)

sample() {  # MODEL PROMPTS SEED OUT_FILE [GENERATE FLAGS...]: one sample per prompt, at TEMPERATURE (default 1)
  if [[ ! -s $4 ]]; then
    $FF generate --model "$1" --prompts "$2" --output jsonl --temperature "${TEMPERATURE:-1}" --top_k 0 --seed "$3" \
        --tokens 16 "${@:5}" \
        > "$4.tmp" 2> "$4.log"
    mv "$4.tmp" "$4"
  fi
}

toy_sft() {  # SEED DIR: SFT from scratch on OUT/data/sft.jsonl (uniformly random responses) -> DIR/sft
  if [[ ! -f $2/sft/model.safetensors ]]; then
    $FF train "${MODEL[@]}" --data_format sft --chat_template none --data_path "$OUT/data/sft.jsonl" --split 95,5,0 \
        --steps 300 --micro_batch 32 --lr 3e-3 --warmup_steps 20 --eval_interval 100 --log_interval 50 \
        --seed "$1" --out_dir "$2/sft" > "$2/sft.log" 2>&1
  fi
  tail -1 "$2/sft.log"
}
