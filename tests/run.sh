#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#   bash tests/run.sh [pytest args...]             the suite (type check first)
#   bash tests/run.sh --compose [pytest args...]   the Docker Compose test only
# Works on a fresh Debian machine with Python >= 3.11 as root: installs
# redis-server, tinyproxy and tmux with apt-get when they are missing, builds .venv,
# installs the project with its test extras, type-checks the packages and runs
# pytest.  Without root, redis-server must be there already; without tinyproxy
# the proxy tests (tests/test_proxy.py) are skipped, without tmux the screen
# tests (tests/test_screen.py), without chromium and chromium-driver the
# dashboard's browser test (tests/test_dashboard_browser.py).
#
# --compose runs tests/test_compose.py's `compose` test, which the default run
# leaves out (pyproject.toml): it builds the image and runs docker-compose.yml
# under a dockerd of its own (tests/dockerd.py).  As root it first installs
# Debian's docker.io, docker-compose, debootstrap and python3-venv when they
# are missing; where Docker cannot run, the test is skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

compose=0
if [ "${1:-}" = "--compose" ]; then
    compose=1
    shift
fi

missing=()
if [ "$compose" = 0 ]; then
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # tests/test_screen.py reads the screen in tmux
    # tests/test_dashboard_browser.py drives Debian's chromium through its chromedriver.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
else
    # Only the compose test needs these; the suite never does.
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
        missing+=(docker-compose)
    fi
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    # The wheels are built by Debian's python3, the base image's interpreter.
    dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # The tests run their own tinyproxy and dockerd; stop the system
        # services the packages may have started (tinyproxy listens on port
        # 8888, dockerd would set up docker0 and iptables rules).
        if [ -d /run/systemd/system ]; then
            if [[ " ${missing[*]} " == *" tinyproxy "* ]]; then
                systemctl disable --now tinyproxy >/dev/null 2>&1 || true
            fi
            if [[ " ${missing[*]} " == *" docker.io "* ]]; then
                systemctl disable --now docker.socket docker.service containerd >/dev/null 2>&1 || true
            fi
        fi
    elif [[ " ${missing[*]} " == *" redis-server "* ]]; then
        echo "tests/run.sh: redis-server is missing; install it (apt-get install redis-server tinyproxy)" >&2
        exit 1
    else
        echo "tests/run.sh: ${missing[*]} missing, their tests will be skipped (apt-get install ${missing[*]})" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if [ "$compose" = 1 ]; then
    exec .venv/bin/python -m pytest -m compose tests/test_compose.py "$@"
fi
.venv/bin/python -m mypy
# Most tests wait on throttled servers and worker processes, so more pytest
# workers than cores pay (pytest-xdist; each worker starts its own servers).
# RANGEFETCH_TEST_WORKERS=0 runs serially; a later -n in the arguments wins.
exec .venv/bin/python -m pytest -n "${RANGEFETCH_TEST_WORKERS:-4}" --dist loadgroup "$@"
