#!/usr/bin/env bash
# One session, both frameworks: `fivefold bench` and the PyTorch peer on the same config, same
# thread count, and the ratio of their tokens/s. Extra arguments are fivefold config flags.
#   bench/compare_pytorch.sh --model_preset moe-small --micro_batch 8
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-3}
cfg=$(mktemp --suffix=.json)
trap 'rm -f "$cfg"' EXIT
./build/fivefold train --print_config "$@" > "$cfg"
echo "== fivefold (fp32, $THREADS threads)"
ff=$(OMP_NUM_THREADS=$THREADS ./build/fivefold bench "$@" --bench_steps "$STEPS" --warmup 1 | tee /dev/stderr | sed -n 's/^result: \([0-9.]*\) tokens\/s.*/\1/p')
echo "== PyTorch peer (fp32, $THREADS threads, glibc keeps large blocks)"
pt=$(GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 OMP_NUM_THREADS=$THREADS \
     /usr/bin/python3 bench/torch_peer.py "$cfg" --steps "$STEPS" --threads "$THREADS" | tee /dev/stderr \
     | sed -n 's/^result: \([0-9.]*\) tokens\/s.*/\1/p')
echo "fivefold $ff tokens/s, PyTorch $pt tokens/s, ratio $(/usr/bin/python3 -c "print(round($ff / $pt, 2))")"
