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

from rangefetch.keys import WORKERS

pytestmark = [pytest.mark.redis, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver; tests/run.sh does it)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless chromium through Debian's chromedriver (no Selenium Manager, no download)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
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


def cells(driver: WebDriver, gid: str) -> str:
    """The piece map of ``gid`` as the page draws it: one letter per cell."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(c => c.dataset.state || 'q').join('')"
    return str(driver.execute_script(script, f'.piecemap[data-gid="{gid}"] .cell'))


def state(driver: WebDriver, gid: str) -> str:
    """The state the downloads table shows for ``gid`` ("" before its row appears)."""
    script = "const c = document.querySelector(arguments[0]); return c ? c.textContent : ''"
    return str(driver.execute_script(script, f'#downloads tr[data-gid="{gid}"] td.state'))


def test_page_follows_a_distributed_download_and_cancels_another(
    server: RangeServer, redis_url: str, download_dir: Path, tmp_path: Path, start_worker: Any, browser: WebDriver
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
        workers = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr[data-id]")
        assert len(workers) == 2
        until(lambda: browser.find_elements(By.CSS_SELECTOR, f'svg.chart[data-gid="{a}"] path.line[d^="M"]'), "a chart")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

        browser.find_element(By.CSS_SELECTOR, f'button.cancel[data-gid="{b}"]').click()
        until(lambda: state(browser, b) == "cancelled", "the second download cancelled")
        message = browser.find_element(By.ID, "message").text
        assert message.startswith(f"cancelled {b}"), message
        status = rangefetch("status", b, "--json", env=env)
        assert '"state": "cancelled"' in status.stdout, status.stdout + status.stderr
        assert not (download_dir / "second.bin").exists() and (download_dir / "second.bin.part").exists()
    finally:
        assert dash.stop() == 0, dash.output()
