#!/usr/bin/env bash
# Benchmark: a newcomer's first prediction. A fresh virtual environment, the README's install line (the core
# package, from this checkout unless PACKAGE says otherwise), then the README's first two uses: `serkit predict
# CLIP` with the shipped default model and the three lines of Python. Prints seconds per step and what the core
# install pulled of the training libraries (nothing, when the core package is right).
#
#   bash bench/first_prediction.sh CLIP.wav                       # pip install <this checkout>
#   PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" bash bench/first_prediction.sh CLIP.wav
#
# Only the Hugging Face cache (openai/whisper-base) is reused: set HF_HUB_CACHE / HF_HUB_OFFLINE as for any run.
set -euo pipefail
clip="$(realpath "${1:?usage: bench/first_prediction.sh CLIP.wav}")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
package="${PACKAGE:-$repo}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
t0=$(now)
python3 -m venv "$work/venv"
# shellcheck disable=SC2086
"$work/venv/bin/pip" install -q "$package" ${PIP_EXTRA:-} 2>&1 | grep -v "^WARNING: Location" || true
t1=$(now)
echo "training libraries in the core install: $("$work/venv/bin/pip" list 2>/dev/null \
  | grep -i -E "^(lightning|matplotlib|scikit-learn) " | tr -s ' ' | paste -sd, || true)"
echo "torch: $("$work/venv/bin/python" -c 'import torch; print(torch.__version__)'), site-packages: \
$(du -sh "$work/venv" | cut -f1)"
cd "$work"
"$work/venv/bin/serkit" predict "$clip" --format csv
t2=$(now)
"$work/venv/bin/python" - "$clip" <<'PY'
import sys

import serkit
rec = serkit.Recognizer.from_pretrained()
print(rec.predict(sys.argv[1])["label"])
PY
t3=$(now)
printf 'seconds: install %.0f, serkit predict %.1f, Python %.1f, total %.0f\n' \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" "$(echo "$t3 - $t0" | bc)"
