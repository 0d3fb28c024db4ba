#!/usr/bin/env bash
# README's test command: install what the tests need, then run them (no torch needed; the live
# comparison against transformers is the `reference` marker, run by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q "$@"
