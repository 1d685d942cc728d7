#!/usr/bin/env bash
# Every figure of docs/performance.md's issue-7 section, in one quiet session: the GEMM ceilings,
# the kernel benchmarks, fivefold against the PyTorch peer (moe-small, the dense model of equal
# active parameters, seq 2048; fp32 and bf16), and the bf16-against-fp32 training curves.
#   bench/cpu_speed_figures.sh [OUT_DIR]      (about 25 minutes on 2 cores; nothing else should run)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cpu-speed}
mkdir -p "$out"
export OMP_NUM_THREADS=${THREADS:-2}
bench="./build/fivefold bench --bench_steps 3 --warmup 1 --profile --peer"
set -x
./build/fivefold_gemm_ceiling > "$out/ceiling.txt" 2>&1
./build/fivefold_kernel_bench > "$out/kernels.txt" 2>&1
$bench --model_preset moe-small --micro_batch 8 > "$out/moe_fp32.txt" 2>&1
$bench --model_preset moe-small --micro_batch 8 --precision bf16 > "$out/moe_bf16.txt" 2>&1
$bench --model_preset llama-small --ffn_hidden 2816 --micro_batch 8 > "$out/dense_fp32.txt" 2>&1
$bench --model_preset llama-small --ffn_hidden 2816 --micro_batch 8 --precision bf16 > "$out/dense_bf16.txt" 2>&1
$bench --model_preset moe-small --seq_len 2048 --micro_batch 2 > "$out/seq2048_fp32.txt" 2>&1
$bench --model_preset moe-small --seq_len 2048 --micro_batch 2 --precision bf16 > "$out/seq2048_bf16.txt" 2>&1
/usr/bin/python3 bench/track_precision.py --steps 300 --threads "$OMP_NUM_THREADS" --out "$out/track" > "$out/track.txt" 2>&1
./build/fivefold train --steps 300 --seed 1235 --out_dir "$out/track/fp32-seed1235" --log_interval 50 > "$out/seed.txt" 2>&1
set +x
grep -h "^compare:" "$out"/*.txt
tail -1 "$out/track.txt"
