"""The screen as a person sees it: real commands in tmux, read back with ``tmux capture-pane``.

Each command runs in a 160 x 20 tmux pane (a real terminal, so rich draws
its bars) against the range server, paced with ``rate=`` so the download
lasts a few seconds; the test polls the pane until what it looks for is
there (a generous hang guard, no timing assertion).  The bar of ``get`` and
of ``wait`` shows the file name, percent, bytes and speed in binary units
(MiB, MiB/s), ETA and the connections open; ``status --watch`` names the
file; a finished download asked for again says "already complete".
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed_helpers import worker_env
from rangeserver import RangeServer

from rangefetch.producer.enqueue import download_id

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")

MIB = 1024 * 1024
DATA = os.urandom(6 * MIB)
SHA = hashlib.sha256(DATA).hexdigest()
BIG = os.urandom(16 * MIB)  # for the workers, who take longer to start
BIG_SHA = hashlib.sha256(BIG).hexdigest()
HANG_GUARD = 90.0  # seconds; the downloads take a few

# A live bar: name ... 33% 2.0/6.0 MiB 1.9 MiB/s ETA 3s 2 conn
BAR = re.compile(r"data\.bin .*\b(\d+)% +[\d.]+/[\d.]+ MiB +[\d.]+ MiB/s +ETA (\d+s|\d+m\d\ds) +(\d+) conn")


class Tmux:
    """A tmux server of our own (its socket in the test's folder), with one detached session per command."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self.tmp_path = tmp_path
        self.env = {**env, "LANG": "C.UTF-8"}
        self.env.pop("TMUX", None)
        # pytest-xdist's workers set COLUMNS=80 and LINES=24, which rich would
        # take over the pane's real size.
        self.env.pop("COLUMNS", None)
        self.env.pop("LINES", None)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], env=self.env, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    def run(self, name: str, *args: str, cwd: Path) -> None:
        """Run ``rangefetch ARGS`` in session ``name``; its exit code is printed after it as ``rc=N``."""
        script = self.tmp_path / f"{name}.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items() if k.startswith("RANGEFETCH_"))
        command = shlex.join([sys.executable, "-m", "rangefetch", *args])
        script.write_text(f"{exports}cd {shlex.quote(str(cwd))}\n{command}\necho rc=$?\nsleep 600\n")
        self._tmux("new-session", "-d", "-x", "160", "-y", "20", "-s", name, f"sh {shlex.quote(str(script))}")

    def screen(self, name: str) -> str:
        """The text on session ``name``'s pane now (wrapped lines joined)."""
        return self._tmux("capture-pane", "-p", "-J", "-t", name)

    def wait_for(self, name: str, found: Callable[[str], object]) -> str:
        """Poll the pane until ``found(text)`` is true; returns that text."""
        deadline = time.monotonic() + HANG_GUARD
        while True:
            text = self.screen(name)
            if found(text):
                return text
            assert not re.search(r"^rc=\d+$", text, re.M), f"{name} ended first:\n{text}"
            assert time.monotonic() < deadline, f"not on the screen of {name}:\n{text}"
            time.sleep(0.1)

    def ended(self, name: str) -> str:
        """The pane once the command has ended (``rc=N`` shown)."""
        return self.wait_for(name, lambda text: re.search(r"^rc=\d+$", text, re.M))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], env=self.env, capture_output=True, check=False)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Tmux]]:
    made: list[Tmux] = []

    def make(env: dict[str, str]) -> Tmux:
        made.append(Tmux(tmp_path, env))
        return made[-1]

    yield make
    for t in made:
        t.close()


def live_bar(text: str) -> re.Match[str] | None:
    """A bar of data.bin under way (some bytes, not all), or ``None``."""
    for match in BAR.finditer(text):
        if 0 < int(match[1]) < 100 and int(match[3]) > 0:
            return match
    return None


def test_get_shows_name_percent_binary_units_eta_connections_and_retries(
    server: RangeServer, tmp_path: Path, tmux: Callable[[dict[str, str]], Tmux]
) -> None:
    server.add_file("data.bin", DATA)
    # 1 MiB/s a connection, 2 connections: about 3 s.  The first two range
    # GETs (the probe's skipped) get a 503, retried at once.
    url = server.url("data.bin", rate=MIB, status=503, skip=1, times=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    env.update(RANGEFETCH_RETRY__BACKOFF="0.05", RANGEFETCH_RETRY__BACKOFF_MAX="0.2")
    screen = tmux(env)
    screen.run("get", "get", url, "-o", "data.bin", "-c", "2", "--chunk-size", "1M", cwd=tmp_path)

    during = screen.wait_for("get", live_bar)
    match = live_bar(during)
    assert match is not None and int(match[3]) <= 2, during
    assert "MB/s" not in during, during  # one unit family: binary

    after = screen.ended("get")
    assert "rc=0" in after, after
    assert re.search(r"data\.bin .*100% +6\.0/6\.0 MiB .*done +2 retries", after), after
    assert f"{SHA}  " in after, after
    assert hashlib.sha256((tmp_path / "data.bin").read_bytes()).hexdigest() == SHA

    screen.run("again", "get", url, "-o", "data.bin", cwd=tmp_path)
    again = screen.ended("again")
    assert "rc=0" in again and f"rangefetch: {tmp_path / 'data.bin'} is already complete" in again, again
    assert f"{SHA}  " in again, again
    assert hashlib.sha256((tmp_path / "data.bin").read_bytes()).hexdigest() == SHA


@pytest.mark.redis
def test_wait_and_watch_show_bars_and_a_rerun_says_already_complete(
    server: RangeServer,
    tmp_path: Path,
    redis_url: str,
    download_dir: Path,
    start_worker: Callable[..., object],
    tmux: Callable[[dict[str, str]], Tmux],
) -> None:
    server.add_file("data.bin", BIG)
    url = server.url("data.bin", rate=MIB)  # 1 MiB/s a connection, 2 connections (-c 2): about 8 s
    env = worker_env(redis_url, download_dir, RANGEFETCH_CHUNK_SIZE="1M")
    enqueued = subprocess.run(
        [sys.executable, "-m", "rangefetch", "enqueue", url, "-o", "data.bin", "-c", "2"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert enqueued.returncode == 0, enqueued.stderr
    did = enqueued.stdout.strip()
    assert did == download_id(url, "data.bin")

    screen = tmux(env)
    screen.run("wait", "wait", did, cwd=tmp_path)
    screen.run("watch", "status", "--watch", did, cwd=tmp_path)
    # Both on screen before a worker starts, so neither misses the download under way.
    screen.wait_for("wait", lambda text: re.search(r"data\.bin .* 0% +0\.0/16\.0 MiB", text))
    screen.wait_for("watch", lambda text: re.search(rf"data\.bin +{did} queued .* 0% +0\.0/16\.0 MiB", text))
    start_worker()
    start_worker()

    during = screen.wait_for("wait", live_bar)
    assert "MB/s" not in during, during
    watching = screen.wait_for("watch", live_bar)
    assert re.search(rf"data\.bin +{did} running", watching), watching

    waited = screen.ended("wait")
    assert "rc=0" in waited, waited
    assert re.search(r"data\.bin .*100% +16\.0/16\.0 MiB .*done", waited), waited
    assert f"{BIG_SHA}  {download_dir.resolve() / 'data.bin'}" in waited, waited
    watched = screen.ended("watch")
    assert "rc=0" in watched and re.search(rf"data\.bin +{did} complete .*100%", watched), watched
    assert hashlib.sha256((download_dir / "data.bin").read_bytes()).hexdigest() == BIG_SHA

    # Asked for again: "already complete", not "queued (0 jobs)".
    screen.run("again", "get", "--redis", redis_url, url, "-o", "data.bin", cwd=tmp_path)
    again = screen.ended("again")
    assert "rc=0" in again, again
    assert f"is already complete (download {did})" in again and "queued" not in again, again
    assert f"{BIG_SHA}  " in again, again
    requeued = subprocess.run(
        [sys.executable, "-m", "rangefetch", "enqueue", url, "-o", "data.bin"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (requeued.returncode, requeued.stdout) == (0, f"{did}\n"), requeued.stderr
    path = download_dir.resolve() / "data.bin"
    assert requeued.stderr == f"rangefetch: {path} is already complete (download {did})\n"
    assert hashlib.sha256((download_dir / "data.bin").read_bytes()).hexdigest() == BIG_SHA
