#!/usr/bin/env bash
# The SenCache demo: sets up the environment (idempotent), then runs the demo workflow through the real ComfyUI,
# uncached and with SenCache, and writes previews, plots and a report to output/demo/ (or --out DIR).
#   scripts/demo.sh [--repeats 3] [--text "yellow triangle on purple"] [--seed 42] [--calibrate-in-graph] ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.dev/venv/bin/python" -m bench demo "$@"
