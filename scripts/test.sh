#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
"$VENV/bin/python" -m pytest tests "$@"
