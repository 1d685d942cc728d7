#!/usr/bin/env bash
# Writes the default corpus, the King James Bible as plain text (from Debian's bible-kjv), to
# data/kjv.txt unless it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -s data/kjv.txt ]; then
  mkdir -p data
  command -v bible > /dev/null || { echo "bible (package bible-kjv) is missing: run scripts/setup.sh" >&2; exit 1; }
  bible 'Gen1:1-Rev22:21' > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
echo "corpus: data/kjv.txt ($(wc -c < data/kjv.txt) bytes)"
