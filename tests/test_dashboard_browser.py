"""The dashboard page in a real browser (Debian's chromium via chromedriver) during real distributed downloads.

Real redis-server, two real worker processes, the range server's slow mode
(``rate=``), ``rangefetch enqueue`` and ``rangefetch dashboard`` as
subprocesses.  The page must show the piece map filling and the first
download completing (its file matches the source), and its Cancel button
must stop the second.  The test saves a screenshot to docs/dashboard.png,
which the README shows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dashboard_helpers import DashboardProcess, rangefetch
from distributed_helpers import worker_env
from rangeserver import RangeServer
from webdriver import Browser

from rangefetch.distributed.keys import WORKERS

pytestmark = [pytest.mark.redis, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver; tests/run.sh does it)",
        allow_module_level=True,
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless chromium through Debian's chromedriver, driven by tests/webdriver.py."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    args = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,900", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}")  # fmt: skip
    driver = Browser(chromedriver=CHROMEDRIVER, chromium=CHROMIUM, args=args, log=tmp_path / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


def until(predicate: Callable[[], Any], what: str, *, timeout: float = 30.0) -> Any:
    """Poll ``predicate`` until it returns something true (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what}")
        time.sleep(0.1)


def cells(driver: Browser, gid: str) -> str:
    """The piece map of ``gid`` as the page draws it: one letter per cell."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(c => c.dataset.state || 'q').join('')"
    return str(driver.execute_script(script, f'.piecemap[data-gid="{gid}"] .cell'))


def state(driver: Browser, gid: str) -> str:
    """The state the downloads table shows for ``gid`` ("" before its row appears)."""
    script = "const c = document.querySelector(arguments[0]); return c ? c.textContent : ''"
    return str(driver.execute_script(script, f'#downloads tr[data-gid="{gid}"] td.state'))


def test_page_follows_a_distributed_download_and_cancels_another(
    server: RangeServer, redis_url: str, download_dir: Path, tmp_path: Path, start_worker: Any, browser: Browser
) -> None:
    first, second = os.urandom(3 * 1024 * 1024 + 4321), os.urandom(4 * 1024 * 1024)
    server.add_file("first.bin", first)
    server.add_file("second.bin", second)
    env = worker_env(redis_url, download_dir)
    for _ in range(2):
        start_worker()
    client = redis.Redis.from_url(redis_url)
    until(lambda: client.zcard(WORKERS) == 2, "two live workers")
    client.close()
    dash = DashboardProcess(env, tmp_path / "dashboard.log")
    try:
        browser.get(dash.url + "/")
        # The second file crawls, so it is still running when the first (about 6 s: 13 ranges
        # of 256 KiB at 128 KiB/s, 5 at a time) is complete.  Both are queued at once.
        enqueues = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rangefetch",
                    "enqueue",
                    server.url(name, rate=rate),
                    "-o",
                    name,
                    "--chunk-size",
                    "256K",
                    "-c",
                    conns,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for name, rate, conns in (("first.bin", 128 * 1024, "5"), ("second.bin", 48 * 1024, "3"))
        ]
        ids = []
        for proc in enqueues:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            ids.append(out.strip())
        a, b = ids

        seen_a: set[str] = set()

        def first_done() -> bool:
            seen_a.update(cells(browser, a))
            return state(browser, a) == "complete"

        until(first_done, "the first download complete")
        assert "i" in seen_a, seen_a  # the map showed ranges in flight, not just the end
        until(lambda: set(cells(browser, a)) == {"v"}, "every range of the first download verified")
        assert len(cells(browser, a)) == 13
        assert hashlib.sha256((download_dir / "first.bin").read_bytes()).digest() == hashlib.sha256(first).digest()

        until(lambda: "i" in cells(browser, b) and state(browser, b) == "running", "the second download running")
        until(lambda: "d" in cells(browser, b) or "v" in cells(browser, b), "a finished range of the second download")
        workers = browser.find_elements("#workers tbody tr[data-id]")
        assert len(workers) == 2
        until(lambda: browser.find_elements(f'svg.chart[data-gid="{a}"] path.line[d^="M"]'), "a chart")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(SCREENSHOT)

        browser.find_element(f'button.cancel[data-gid="{b}"]').click()
        until(lambda: state(browser, b) == "cancelled", "the second download cancelled")
        message = browser.find_element("#message").text
        assert message.startswith(f"cancelled {b}"), message
        status = rangefetch("status", b, "--json", env=env)
        assert '"state": "cancelled"' in status.stdout, status.stdout + status.stderr
        assert not (download_dir / "second.bin").exists() and (download_dir / "second.bin.part").exists()
    finally:
        assert dash.stop() == 0, dash.output()
