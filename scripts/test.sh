#!/usr/bin/env bash
# Set everything up (Python deps, redis-server, Chromium) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-deps.sh
scripts/setup.sh --dev
. .venv/bin/activate
ruff check sfu denoiser tests
mypy  # sfu and denoiser (pyproject.toml: strict on the runtime packages)
exec python -m pytest "$@"
