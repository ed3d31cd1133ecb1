#!/usr/bin/env bash
# The test command: sets up the environment if needed (idempotent), then runs the whole suite once per ComfyUI
# host ("leg") against the real ComfyUI (library and server) and a real headless browser:
#   0.3.75   .dev/ComfyUI            always
#   0.18.1   .dev/ComfyUI-0.18.1     when ../shared/hosts/comfyui-0.18.1.tar.gz exists (see scripts/setup.sh);
#                                    .dev/site-0.18.1 goes first on PYTHONPATH
# SENCACHE_LEGS="0.3.75" (or "0.18.1", or "0.3.75 0.18.1") selects legs. SENCACHE_COMFYUI=/path/to/ComfyUI runs
# one leg against that checkout instead. Extra arguments go to pytest. Fails when any leg fails or collects no test.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" || exit 1
if [ -f "$ROOT/scripts/setup_browser.sh" ]; then bash "$ROOT/scripts/setup_browser.sh" || exit 1; fi
cd "$ROOT"
PY="$ROOT/.dev/venv/bin/python"
HOSTS_DIR="${SENCACHE_HOSTS_DIR:-$ROOT/../shared/hosts}"

declare -a NAMES=() DIRS=() SITES=()
if [ -n "${SENCACHE_COMFYUI:-}" ]; then
  NAMES+=("custom"); DIRS+=("$SENCACHE_COMFYUI"); SITES+=("")
else
  want_leg() { [ -z "${SENCACHE_LEGS:-}" ] || [[ " ${SENCACHE_LEGS//,/ } " == *" $1 "* ]]; }
  if want_leg 0.3.75; then NAMES+=("0.3.75"); DIRS+=("$ROOT/.dev/ComfyUI"); SITES+=(""); fi
  if want_leg 0.18.1; then
    if [ -f "$ROOT/.dev/ComfyUI-0.18.1/.sencache-extracted" ] && [ -f "$HOSTS_DIR/comfyui-0.18.1.tar.gz" ]; then
      NAMES+=("0.18.1"); DIRS+=("$ROOT/.dev/ComfyUI-0.18.1"); SITES+=("$ROOT/.dev/site-0.18.1")
    else
      SKIPPED="0.18.1 leg SKIPPED: ../shared/hosts/comfyui-0.18.1.tar.gz not found"
      echo "$SKIPPED"
    fi
  fi
fi
if [ "${#NAMES[@]}" -eq 0 ]; then
  echo "no test leg selected (SENCACHE_LEGS='${SENCACHE_LEGS:-}'; known: 0.3.75 0.18.1)" >&2
  exit 1
fi

declare -a RESULTS=()
failed=0
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  echo
  echo "================================================================================================"
  echo "== leg ComfyUI $name: ${DIRS[$i]}"
  echo "================================================================================================"
  start=$(date +%s)
  SENCACHE_COMFYUI="${DIRS[$i]}" PYTHONPATH="${SITES[$i]}${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest "$@"
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then verdict="passed"; else verdict="FAILED (pytest exit $rc)"; failed=1; fi
  if [ "$rc" -eq 5 ]; then verdict="FAILED (no tests collected)"; fi
  RESULTS+=("ComfyUI $name: $verdict in $((secs / 60))m$((secs % 60))s")
done

echo
echo "== summary"
for r in "${RESULTS[@]}"; do echo "   $r"; done
if [ -n "${SKIPPED:-}" ]; then echo "   $SKIPPED"; fi
exit $failed
