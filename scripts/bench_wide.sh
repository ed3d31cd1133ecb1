#!/usr/bin/env bash
# The wide benchmark (not part of the tests): every method of bench.quality's WIDE_METHODS on both models
# (validation, then demo) over WIDE_CONFIGS, the Calibrator's caching-or-fewer-steps prediction checked against
# them (`python -m bench choose_check`), then the summary results/wide/README.md (`python -m bench wide`).
#   scripts/bench_wide.sh                    # 10 test samples, 3 calibration samples (about 1.5 h on one CPU core)
#   scripts/bench_wide.sh --samples 4        # extra arguments go to every bench.quality run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$ROOT/.dev/venv/bin/python"
CONFIGS="$("$PY" -c 'from bench.quality import WIDE_CONFIGS as c; print(",".join(c))')"
read -r -a METHODS <<< "$("$PY" -c 'from bench.quality import WIDE_METHODS as m; print(" ".join(m))')"
for model in validation demo; do
  "$PY" -m bench quality --config "$CONFIGS" --samples 10 --calibration-samples 3 --timing-samples 0 --no-vgg \
    --methods "${METHODS[@]}" --weights "$model" --out "results/wide/$model" "$@"
done
"$PY" -m bench choose_check
"$PY" -m bench wide
