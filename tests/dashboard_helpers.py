"""Helpers for the dashboard tests: a ``rangefetch dashboard`` subprocess and CLI runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from distributed_helpers import CommandProcess
from redisserver import free_port


class DashboardProcess(CommandProcess):
    """``rangefetch dashboard`` on a free port of 127.0.0.1; ``url``, ``stop()``, ``output()``."""

    def __init__(self, env: Mapping[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(env, log, "dashboard", "--port", str(self.port), *args)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the dashboard did not start:\n{self.output()}")
            time.sleep(0.1)


def rangefetch(*args: str, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        env=dict(env), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
