#!/usr/bin/env bash
# The quality benchmark (not part of the tests): results/quality/<config>.{md,json,png}.
#   scripts/bench_quality.sh                       # ComfyUI's Wan 2.1 template config (~20 min on 1 CPU core)
#   scripts/bench_quality.sh --config euler_30_cfg6,dpmpp_2m_30_cfg6
#   scripts/bench_quality.sh --config all          # every config (hours on CPU)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.dev/venv/bin/python" -m bench quality "$@"
