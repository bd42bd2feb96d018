#!/usr/bin/env bash
# serkit's main job end to end on a fresh machine: set up, prepare and check the corpora, then cross-validate
# the RAVDESS baseline with openai/whisper-base (extract features into the cache, 6 speaker-independent folds,
# results.json + report.md with figures).
#   bash scripts/main.sh [OUT_DIR]        (default: runs/main)
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
"$SK" cv "$REPO/configs/ravdess/baseline.yaml" --out "$OUT/ravdess-baseline"
echo "report: $OUT/ravdess-baseline/report.md"
