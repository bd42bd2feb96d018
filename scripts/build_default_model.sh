#!/usr/bin/env bash
# Rebuild the default model that ships inside the package (src/serkit/default_model/) from the shared corpora:
# `serkit train configs/default/whisper-base-6class.yaml`, then `python -m serkit.default_model pack` keeps what
# prediction needs (heads, labels, encoder record, calibration, card) and drops local paths. Deterministic: the
# same corpora and versions give the same weights, bit for bit (the script prints their sha256).
#   [DEFAULT_MODEL_CV=RUN/results.json] bash scripts/build_default_model.sh [WORK_DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO/scripts/setup.sh"
WORK="${1:-$REPO/runs/default-model}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$VENV/bin/serkit" train "$REPO/configs/default/whisper-base-6class.yaml" --out "$WORK/model" --overwrite
# DEFAULT_MODEL_CV: results.json of `serkit cv configs/cross/ravdess-emodb-single-clip.yaml` (the card's figures)
"$VENV/bin/python" -m serkit.shipped_model pack "$WORK/model" "$REPO/src/serkit/default_model" \
  ${DEFAULT_MODEL_CV:+--cv "$DEFAULT_MODEL_CV"}
sha256sum "$REPO/src/serkit/default_model/model.safetensors"
