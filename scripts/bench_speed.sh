#!/usr/bin/env bash
# Speed benchmark in one command: sets up the environment if needed (scripts/setup.sh, idempotent), then runs
# `python -m bench speed` (bench/speed.py). Defaults: --size full --device auto (Wan 2.1 1.3B size at 480p × 81
# frames, bf16, on a CUDA GPU; under 8 minutes on an H100/H200). Results: results/speed/<device>-<size>.md and .json.
#   bash scripts/bench_speed.sh                       # full size on the GPU
#   bash scripts/bench_speed.sh --size reduced        # tiny Wan on whatever device (CPU here: ~30 s)
# Extra arguments go to `python -m bench speed` (see --help). SENCACHE_COMFYUI=/path/to/ComfyUI uses another ComfyUI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec env PYTHONUNBUFFERED=1 "$ROOT/.dev/venv/bin/python" -m bench speed "$@"
