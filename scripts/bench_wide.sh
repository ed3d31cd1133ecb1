#!/usr/bin/env bash
# The wide benchmark (not part of the tests): bench.quality's WIDE_METHODS on every model of bench.common.MODELS
# (recipe B and C models first, then recipe A's checkpoints) over WIDE_CONFIGS, each with the Sensitivity
# Calibrator's verdict made beforehand on 4 calibration runs, then the summary results/wide/README.md
# (`python -m bench wide`).
#   scripts/bench_wide.sh                          # 10 test samples, 4 calibration runs (hours on one CPU core)
#   MODELS="recipe_wide" scripts/bench_wide.sh --samples 4     # extra arguments go to every bench.quality run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$ROOT/.dev/venv/bin/python"
CONFIGS="$("$PY" -c 'from bench.quality import WIDE_CONFIGS as c; print(",".join(c))')"
read -r -a METHODS <<< "$("$PY" -c 'from bench.quality import WIDE_METHODS as m; print(" ".join(m))')"
for model in ${MODELS:-recipe_wide recipe_deep validation demo demo_step9139}; do
  "$PY" -m bench quality --config "$CONFIGS" --samples 10 --calibration-samples 4 --timing-samples 0 --no-vgg \
    --methods "${METHODS[@]}" --weights "$model" --out "results/wide/$model" "$@"
done
"$PY" -m bench wide
