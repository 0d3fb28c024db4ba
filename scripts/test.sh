#!/usr/bin/env bash
# README's test command: install what the tests need, then run them (no torch needed; the live
# comparison against transformers is the `reference` marker, run by .ci/run). The tests run in a
# random order (pytest-randomly); the seed is printed so a failing order can be replayed with
# EDGERT_TEST_SEED=N bash scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
seed="${EDGERT_TEST_SEED:-$RANDOM}"
echo "test order: random, seed $seed (replay: EDGERT_TEST_SEED=$seed bash scripts/test.sh)"
exec .venv/bin/python -m pytest -q -p randomly --randomly-seed="$seed" "$@"
