#!/usr/bin/env bash
# Prepare the Celery comparison: redis-server from Debian's packages and a
# virtualenv at bench/celery/.venv with the pinned packages of
# requirements.txt from PyPI. Safe to run again: it only does what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=false
apt_install() {
    if ! $apt_updated; then
        as_root apt-get update
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# redis-server: the benchmark starts its own instance on a free loopback
# port; a system service is not needed (nor used).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "setup: installing redis-server (apt)"
    apt_install redis-server
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup: installing python3 (apt)"
    apt_install python3 python3-venv
    python=python3
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup: creating $venv"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$venv"
        apt_install python3-venv
        "$python" -m venv "$venv"
    fi
fi

# pip makes no request when every pinned version is already installed.
if ! "$venv/bin/python" - "$here/requirements.txt" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        ok &= version(name) == want
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PY
then
    echo "setup: installing pinned packages into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

echo "setup: ready: $("$venv/bin/python" -c 'import celery, redis; print("celery", celery.__version__, "redis-py", redis.__version__)'), $(redis-server --version | cut -d' ' -f1-3)"
