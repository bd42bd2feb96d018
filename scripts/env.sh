# Sourced by the other scripts: the venv, and ../shared when it is beside the repository.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SERKIT_VENV:-$REPO/.venv}"
if [ -d "$REPO/../shared" ]; then
  SHARED="$(cd "$REPO/../shared" && pwd)"
  export SERKIT_DATA="${SERKIT_DATA:-$SHARED}"
  export HF_HUB_CACHE="${HF_HUB_CACHE:-$SHARED/hf-cache}"
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
fi
export PYTHONUNBUFFERED=1
