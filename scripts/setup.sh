#!/usr/bin/env bash
# Create .venv and install serkit with pinned dependencies. Idempotent: re-installs only when pyproject changes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.serkit-installed"
WANT="$(sha1sum "$REPO/pyproject.toml" | cut -c1-40)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # CPU build of torch first (a local file on the team's machines), then serkit and its pinned dependencies.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -e "$REPO[dev,text]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import serkit, torch, transformers, lightning, soundfile, soxr, faiss" \
    || { echo "setup: install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
