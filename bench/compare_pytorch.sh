#!/usr/bin/env bash
# One session, both frameworks: a thin wrapper around `fivefold bench --peer`, which times
# fivefold, then the PyTorch peer (bench/torch_peer.py) on the same config, steps, warm-up and
# threads, and prints both tokens/s and their ratio (the `compare:` line). Extra arguments are
# `fivefold bench` flags; THREADS (default 2) and STEPS (default 3) as before, FIVEFOLD the binary
# (default build/fivefold).
#   bench/compare_pytorch.sh --model_preset moe-small --micro_batch 8 [--precision bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-3}
OMP_NUM_THREADS=$THREADS exec "${FIVEFOLD:-./build/fivefold}" bench "$@" --bench_steps "$STEPS" --warmup 1 --peer
