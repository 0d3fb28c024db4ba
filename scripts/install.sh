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
# setuptools prints a 9-line "Editable installation ... Please be careful with folders in your
# working directory" note for every editable install (five here); it is information only, so that
# one message is filtered. Every other warning and every error still shows.
PYTHONWARNINGS="ignore:Editable installation." \
.venv/bin/python -m pip install -q -e ".[dev]" \
    -e plugins/sequential -e plugins/greedy -e plugins/speculative -e plugins/neon_kernels
