#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#   bash tests/run.sh [pytest args...]
# Works on a fresh Debian machine with Python >= 3.11 as root: installs
# redis-server with apt-get when it is missing, builds .venv, installs the
# project with its test extras, type-checks the packages and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing redis-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq redis-server >/dev/null
    else
        echo "tests/run.sh: redis-server is missing; install it (apt-get install redis-server)" >&2
        exit 1
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
