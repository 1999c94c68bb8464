"""A small W3C WebDriver client for the browser test: chromedriver as a subprocess, httpx to talk to it.

Only what tests/test_dashboard_browser.py uses: open a session, navigate, find
elements by CSS selector, read their text, click them, run a script, take a
screenshot, close.  It replaces Selenium, whose dependency on trio made httpcore
import trio in every ``python -m rangefetch`` the suite starts.  The protocol is
https://www.w3.org/TR/webdriver2/ ("Endpoints" lists the commands below).
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from redisserver import free_port

# The key a web element reference carries in JSON (WebDriver, "Elements").
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(Exception):
    """chromedriver answered a command with an error (its ``error`` code and ``message``)."""


class Element:
    """One element of the page, by its WebDriver reference."""

    def __init__(self, browser: Browser, element_id: str) -> None:
        self.browser = browser
        self.id = element_id

    @property
    def text(self) -> str:
        """The element's rendered text (Get Element Text)."""
        return str(self.browser.command("GET", f"/element/{self.id}/text"))

    def click(self) -> None:
        """Element Click: scrolls it into view and clicks its centre."""
        self.browser.command("POST", f"/element/{self.id}/click", {})


class Browser:
    """A chromedriver subprocess on a free port of 127.0.0.1 with one session of ``chromium``.

    Raises ``AssertionError`` (with chromedriver's log) when chromedriver does not
    start, and ``WebDriverError`` when it cannot open the session.
    """

    def __init__(self, *, chromedriver: str, chromium: str, args: Iterable[str], log: Path) -> None:
        self.log = log
        port = free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={port}", f"--log-path={log}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # trust_env=False: no proxy from the environment between us and 127.0.0.1.
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)
        self.session = ""
        try:
            self._wait_ready()
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": list(args)},
            }
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
            self.session = str(value["sessionId"])
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise AssertionError(f"chromedriver did not start (exit {self.proc.poll()}):\n{log}")
            time.sleep(0.1)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        value = response.json()["value"]
        if response.status_code != 200:
            error = value.get("error", "?") if isinstance(value, dict) else "?"
            message = value.get("message", "") if isinstance(value, dict) else str(value)
            raise WebDriverError(f"{method} {path}: {error}: {message}")
        return value

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one command of this session (``path`` below /session/{id}) and return its ``value``."""
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        """Navigate To ``url`` (waits for the page to load)."""
        self.command("POST", "/url", {"url": url})

    def find_element(self, css: str) -> Element:
        """The first element matching the CSS selector; ``WebDriverError`` (no such element) when none does."""
        return Element(self, self.command("POST", "/element", {"using": "css selector", "value": css})[ELEMENT_KEY])

    def find_elements(self, css: str) -> list[Element]:
        """Every element matching the CSS selector, possibly none."""
        found = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, ref[ELEMENT_KEY]) for ref in found]

    def execute_script(self, script: str, *args: Any) -> Any:
        """Execute Script: run ``script`` as a function body with ``arguments``, return what it returns."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        """A PNG of the viewport (Take Screenshot)."""
        return base64.b64decode(self.command("GET", "/screenshot"))

    def save_screenshot(self, path: Path) -> None:
        path.write_bytes(self.screenshot())

    def quit(self) -> None:
        """Delete the session (chromedriver closes chromium), then stop chromedriver."""
        try:
            if self.session and self.proc.poll() is None:
                try:
                    self._call("DELETE", f"/session/{self.session}")
                except (httpx.HTTPError, WebDriverError):
                    pass  # chromedriver is stopped below either way
            self.session = ""
        finally:
            self.http.close()
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
