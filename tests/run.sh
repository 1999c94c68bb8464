#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#   bash tests/run.sh [pytest args...]
# Works on a fresh Debian machine with Python >= 3.11 as root: installs
# redis-server and tinyproxy with apt-get when they are missing, builds .venv,
# installs the project with its test extras, type-checks the packages and runs
# pytest.  Without root, redis-server must be there already; without tinyproxy
# the proxy tests (tests/test_proxy.py) are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
        # The tests run their own tinyproxy; stop the system service the
        # package may have started (it listens on port 8888).
        if [[ " ${missing[*]} " == *" tinyproxy "* ]] && [ -d /run/systemd/system ]; then
            systemctl disable --now tinyproxy >/dev/null 2>&1 || true
        fi
    elif [[ " ${missing[*]} " == *" redis-server "* ]]; then
        echo "tests/run.sh: redis-server is missing; install it (apt-get install redis-server tinyproxy)" >&2
        exit 1
    else
        echo "tests/run.sh: tinyproxy is missing, the proxy tests will be skipped (apt-get install tinyproxy)" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
