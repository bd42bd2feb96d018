#!/usr/bin/env bash
# Create the venv ($SERKIT_VENV, default .venv) and install serkit with the exact versions of constraints.txt.
# Idempotent: re-installs only when pyproject.toml or constraints.txt change. Any pip error stops it with pip's
# output and a non-zero status, and leaves no stamp behind (the next run tries again).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PY="${PYTHON:-python3}"
EXTRAS="train,dev,text,recipes,export,serve,finetune"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.serkit-installed"
WANT="$(cat "$REPO/pyproject.toml" "$REPO/constraints.txt" | sha1sum | cut -c1-40) $EXTRAS"

# pip quietly; on failure, its whole output and the failing command, then exit 1
pip_install() {
  local log
  log="$(mktemp)"
  if ! "$VENV/bin/python" -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || :
    rm -f "$log"
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
  rm -f "$log"
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  rm -f "$STAMP"
  pip_install --upgrade pip
  # CPU build of torch first (a local file on the team's machines), then serkit and its dependencies
  pip_install -c "$REPO/constraints.txt" torch
  pip_install -c "$REPO/constraints.txt" -e "$REPO[$EXTRAS]"
  "$VENV/bin/python" -c "import serkit, torch, transformers, lightning, soundfile, soxr, silero_vad" \
    || { echo "setup: installed, but serkit or a core dependency does not import" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

# The browser test (tests/test_service_browser.py) drives Debian's chromium through its chromedriver.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium and chromium-driver with apt-get (for the browser test)"
  apt_log="$(mktemp)"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
      >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    rm -f "$apt_log"
    echo "setup: apt-get install chromium chromium-driver failed" >&2
    exit 1
  fi
  rm -f "$apt_log"
else
  echo "setup: note: chromium / chromedriver not found and apt-get cannot run here (needs root and apt);" \
    "the browser test will skip"
fi
