#!/usr/bin/env bash
# Fresh-machine test command: creates .venv, installs torch first (the CPU wheel,
# so that no dependency pulls a CUDA build), then dicache in editable mode with the
# test extras pinned by constraints.txt, then runs pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DICACHE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check -c constraints.txt -e ".[test]"
exec "$VENV/bin/python" -m pytest -q "$@"
