#!/usr/bin/env bash
# Set everything up and start the demo server (in-process engine on CPU, no Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/denoise-sfu serve "$@"
