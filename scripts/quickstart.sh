#!/usr/bin/env bash
# Set everything up and run the main job: SmolLM2-135M-Instruct answering a prompt on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/edge-rt plugins
.venv/bin/edge-rt pull smollm2
.venv/bin/edge-rt run --model smollm2 --prompt "${1:-The ship entered the port of}" \
    --max-tokens 48 --temperature 0
