#!/usr/bin/env bash
# serkit's main job end to end on a fresh machine: set up, prepare and check the corpora.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO/scripts/setup.sh"
OUT="${1:-$REPO/runs/main}"
mkdir -p "$OUT"
SK="$VENV/bin/serkit"
for corpus in ravdess emodb tava; do
  "$SK" prepare "$corpus" --out "$OUT/manifests/$corpus.csv"
done
"$SK" check "$OUT/manifests/ravdess.csv" "$OUT/manifests/emodb.csv" "$OUT/manifests/tava.csv" --report "$OUT/check.csv"
"$SK" folds "$OUT/manifests/ravdess.csv" --out "$OUT/folds/ravdess.json"
