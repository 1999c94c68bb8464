"""A real redis-server on 127.0.0.1 for the distributed tests.

It runs from a temporary directory with the append-only file on, so it can be
killed and restarted mid-test and come back with its data, as a production
Redis with ``appendonly yes`` would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

# Under pytest-xdist (tests/run.sh -n) every worker hands out ports from a
# slice of its own below Linux's ephemeral range (32768-60999), so a port one
# worker picked cannot be taken by another before its server binds it, nor
# while a test has its Redis stopped for a restart.
_SLICE = 500
_cursor = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    global _cursor
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        base = 20000 + (int(worker[2:]) % 24) * _SLICE
        for _ in range(_SLICE):
            port = base + _cursor % _SLICE
            _cursor += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process: ``start()``, ``stop()``, ``restart()``, ``url``."""

    def __init__(self, *, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (tests/run.sh installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rangefetch-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port)
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        # Loading the AOF after a restart: wait until Redis serves commands.
        while True:
            try:
                client.dbsize()
                break
            except redis.BusyLoadingError:
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """Kill the server (no clean shutdown), stay down ``down_for`` seconds, start again."""
        self.stop(kill=True)
        time.sleep(down_for)
        self.start()

    def flush(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port)
        client.flushall()
        client.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
