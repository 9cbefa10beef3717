#!/usr/bin/env bash
# Official-SDK conformance: builds oz-server, oz-agent-worker and oz, then
# runs the pytest suite (conformance/python) against the real binaries with
# the official Python SDK in strict mode, plus a smoke test with the official
# TypeScript SDK. Works from a clean clone; needs python3 (3.9+) and PyPI,
# and node 20 + npm for the TypeScript part. Exits non-zero on any failure.
#
#   bash conformance/run.sh [pytest args...]    e.g. -k schedules, -m runs
set -euo pipefail
cd "$(dirname "$0")/.."

venv=conformance/.venv
req=conformance/python/requirements.txt
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "conformance: creating $venv"
  "$python" -m venv "$venv"
fi
# Reinstall only when the pins change.
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "conformance: installing $req"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --requirement "$req"
  echo "$want" > "$stamp"
fi

# The TypeScript SDK smoke checks (conformance/typescript) run when npm is here.
if command -v npm >/dev/null 2>&1; then
  echo "conformance: installing the TypeScript SDK (npm ci)"
  (cd conformance/typescript && npm ci --no-audit --no-fund --loglevel=error)
  export OZ_CONFORMANCE_TS=required
else
  echo "conformance: npm not found; the TypeScript SDK checks will be skipped"
fi

cargo build --locked --bin oz-server --bin oz-agent-worker --bin oz

target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
  | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export OZ_BIN_DIR="$target_dir/debug"

"$venv/bin/python" -m pytest -q conformance/python "$@"
