#!/usr/bin/env bash
# Create .venv (if missing) and install the five distributions of this repo editable, with the
# development tools. Used by scripts/quickstart.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]" \
    -e plugins/sequential -e plugins/greedy -e plugins/speculative -e plugins/neon_kernels
