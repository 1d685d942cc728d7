#!/usr/bin/env bash
# Builds fivefold and runs every test (unit, parity against PyTorch) through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
OMP_NUM_THREADS=2 ctest --output-on-failure -j2 "$@"
