"""What tests/test_tls.py and tests/test_proxy.py share: the data, Settings and CLI environment per data path."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from rangeserver import RangeServer

from rangefetch import DownloadResult, RetryPolicy, Settings, download

CHUNK = 256 * 1024
DATA = os.urandom(700_000)  # three ranges, the last one short
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "data.bin"
FAST_RETRY = RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4)
RANGED = ["--chunk-size", "256K", "-c", "4"]  # the CLI flags for the same plan
HANG_GUARD = 30.0  # seconds: fails a download that hangs; never a timing assertion


def settings(fast_path: bool, **overrides: Any) -> Settings:
    """Small ranges, four connections, near-instant retries, on the chosen data path.

    Built when called, so it sees variables a test set with monkeypatch before.
    """
    values: dict[str, Any] = {
        "connections": 4,
        "chunk_size": CHUNK,
        "retry": FAST_RETRY,
        "fast_path": fast_path,
        **overrides,
    }
    return Settings(**values)


def path_env(fast_path: bool, **extra: str) -> dict[str, str]:
    """Environment variables for a CLI run on the chosen data path, plus ``extra``."""
    return {"RANGEFETCH_FAST_PATH": "1" if fast_path else "0", **extra}


def host_port(server: RangeServer) -> str:
    """``127.0.0.1:PORT`` of ``server``, as a proxy's log names it."""
    return f"127.0.0.1:{server.port}"


async def fetch(url: str, directory: Path, s: Settings, output: str | None = None) -> DownloadResult:
    """``download(url, output, directory=directory, settings=s)``, failed if it takes over HANG_GUARD."""
    async with asyncio.timeout(HANG_GUARD):
        return await download(url, output, directory=directory, settings=s)


def alternating(*cases: tuple[Any, ...]) -> list[Any]:
    """Each case once, with a ``fast_path`` value appended: True, False, True, ...

    For parametrizing a test over many cases whose data path matters less
    than the case itself: both paths run, without doubling the cases.
    Use with the argument names of the case followed by ``"fast_path"``
    (the parameter then stands in for the ``fast_path`` fixture).
    """
    params = []
    for i, case in enumerate(cases):
        fast = i % 2 == 0
        label = "-".join([*(str(value).replace(" ", "_") for value in case), "fast" if fast else "plain"])
        params.append(pytest.param(*case, fast, id=label))
    return params
