#!/usr/bin/env bash
# Fresh-machine main job: creates .venv, installs torch (the CPU wheel) first, then dicache with the
# pinned versions of constraints.txt, then runs the demo. Arguments go to `python -m dicache demo`
# (default: --out demo_out).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DICACHE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check -c constraints.txt -e ".[demo]"
[ $# -gt 0 ] || set -- --out demo_out
exec "$VENV/bin/python" -m dicache demo "$@"
