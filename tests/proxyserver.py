"""A real forward proxy for the proxy tests: Debian's tinyproxy, run in the foreground.

tinyproxy (1.11) logs each request line it reads, before it connects
anywhere, so a test can count what went through it::

    CONNECT   Dec 02 01:51:00.291 [5066]: Request (file descriptor 5): CONNECT 127.0.0.1:18998 HTTP/1.1
    CONNECT   Dec 02 01:51:00.254 [5066]: Request (file descriptor 5): GET http://127.0.0.1:18998/f/x HTTP/1.1

Its threads write the level-and-date prefix, the message and the newline with
three separate write(2) calls, so the lines of two connections can interleave;
a message is one write, so the log is searched by message, not split into lines.

The configuration has no ``ConnectPort`` line, so CONNECT may reach any port,
and ``XTinyproxy Yes``: every request forwarded in absolute form reaches the
origin with ``X-Tinyproxy: 127.0.0.1``, which the range server records.  For a
request sent in absolute form tinyproxy opens a new upstream connection and
closes both sides after the response.

Started as root, tinyproxy keeps root (with a warning) unless the config names
a ``User``; ours names ``nobody``.  It opens its log file only after dropping
to that user, so the log lives in a directory of its own, made with mkdtemp
outside pytest's root-only tmp tree and handed to ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit

from redisserver import free_port

_REQUEST = re.compile(rb"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/\d\.\d")
_READY = b"Accepting connections"


@dataclass(frozen=True)
class ProxyRequest:
    """One request line tinyproxy logged."""

    method: str
    target: str  # host:port for CONNECT, the absolute URL otherwise

    @property
    def hostport(self) -> str:
        """The ``host:port`` the request is for (``host`` alone if the URL names no port)."""
        if self.method == "CONNECT":
            return self.target.lower()
        return urlsplit(self.target).netloc.rpartition("@")[2].lower()


def _unprivileged() -> tuple[int, int] | None:
    """The uid and gid of ``nobody``, or None if there is no such user."""
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


class TinyProxy:
    """One tinyproxy process on 127.0.0.1: ``start()``, ``stop()``, ``url`` and its log.

    Count what went through it since a mark::

        mark = proxy.mark()
        ...  # requests through proxy.url
        assert proxy.connects_since(mark, "127.0.0.1:8443") == 2
    """

    def __init__(self) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (tests/run.sh installs it)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="rangefetch-tinyproxy-"))
        self.config_path = self.dir / "tinyproxy.conf"
        self.log_path = self.dir / "tinyproxy.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TinyProxy:
        """Start tinyproxy on a free port and wait until it accepts connections.

        Raises:
            RuntimeError: it exited or did not get ready within 10 s (its output is in the message).
        """
        for _ in range(3):  # the free port may be taken before tinyproxy binds it
            self.port = free_port()
            self.log_path.unlink(missing_ok=True)
            self.config_path.write_text(self._config())
            self._output = (self.dir / "output").open("wb")
            self.proc = subprocess.Popen(
                [self.binary, "-d", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return self
            self.stop()
        output = (self.dir / "output").read_text(errors="replace").strip()
        raise RuntimeError(f"tinyproxy did not start: {output or 'no output'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the log ---------------------------------------------------------------

    def mark(self) -> int:
        """A position in the log: pass it to the ``*_since`` methods."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        """The raw log text written since ``mark`` (for assertion messages)."""
        return self._read(mark).decode("latin-1")

    def requests_since(self, mark: int, hostport: str | None = None) -> list[ProxyRequest]:
        """The request lines logged since ``mark``, oldest first; only those for ``hostport`` if given."""
        text = self._read(mark)
        found = [ProxyRequest(m[1].decode("latin-1"), m[2].decode("latin-1")) for m in _REQUEST.finditer(text)]
        return [r for r in found if hostport is None or r.hostport == hostport.lower()]

    def connects_since(self, mark: int, hostport: str) -> int:
        """How many ``CONNECT hostport`` tunnels were asked for since ``mark``."""
        return sum(r.method == "CONNECT" for r in self.requests_since(mark, hostport))

    def gets_since(self, mark: int, hostport: str) -> int:
        """How many absolute-form ``GET http://hostport/...`` requests came since ``mark``."""
        return sum(r.method == "GET" for r in self.requests_since(mark, hostport))

    # --- internals ---------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 100",
            "Timeout 60",
            "DisableViaHeader Yes",
            "XTinyproxy Yes",
        ]
        ids = _unprivileged() if os.geteuid() == 0 else None
        if ids is not None:
            uid, gid = ids
            os.chown(self.dir, uid, gid)  # it creates its log after dropping to nobody
            lines += [f"User {uid}", f"Group {gid}"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _READY in self._read(0):
                return True
            time.sleep(0.02)
        return False

    def _read(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""
