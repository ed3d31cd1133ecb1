#!/usr/bin/env bash
# The test command: sets up the environment if needed (idempotent), then runs the whole suite against the
# real ComfyUI (library and server) and a real headless browser. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
if [ -f "$ROOT/scripts/setup_browser.sh" ]; then bash "$ROOT/scripts/setup_browser.sh"; fi
cd "$ROOT"
exec "$ROOT/.dev/venv/bin/python" -m pytest "$@"
