#!/usr/bin/env bash
# The main job: build, prepare the default corpus, train the default small MoE model on it, and
# sample from the trained model. Extra arguments go to `fivefold train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
bash scripts/prepare_corpus.sh
./build/fivefold train "$@"
./build/fivefold generate --model runs/default/model.safetensors --prompt "And God said" --tokens 300
