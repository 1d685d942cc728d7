#!/usr/bin/env bash
# Installs the Debian 12 packages fivefold builds and tests with. Safe to run twice: apt-get
# skips what is already installed, and the package index is refreshed only when a package is missing.
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin          # the distributed engine
  libopenblas-openmp-dev              # fp32 GEMM; the OpenMP build runs single-threaded inside our parallel regions
  nlohmann-json3-dev libcli11-dev     # configs and the command line
  libsentencepiece-dev libicu-dev     # tokenizers: SentencePiece (load, train); Unicode classes for byte-level BPE
  libgtest-dev libbenchmark-dev       # tests and kernel benchmarks
  libdnnl-dev                         # oneDNN: the bf16 GEMMs and the GEMM ceilings
  python3 python3-torch python3-numpy # the independent oracle in parity tests and the bench peer
  bible-kjv                           # the default training corpus (King James Bible)
  chromium                            # headless: the run report's page is opened and checked (cli.report)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
