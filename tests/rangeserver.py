"""A real HTTP/1.1 range server with fault modes, used by the download tests.

Content lives in memory at ``/f/<name>``. Each test chooses its faults through
the query string (``server.url("big", drop=100, times=2)``); the downloader
treats the query as opaque. Fault counters are kept per (file name, query
without ``redirect``/``redirect_to``), so a ``key=xyz`` parameter isolates a
test further. "First K" below means the first K GET requests for that key
since the last :meth:`RangeServer.reset` (K is ``times``, default 1), after
the first ``skip`` GETs (default 0), which are served without the fault.

Faults: ``norange``, ``acceptranges_none``, ``nolength`` (+``chunked``),
``nohead[=code]``, ``headlies``, ``drop=N``, ``stall=S`` (+``stall_after=N``),
``status=CODE`` (+``retry_after=S`` or ``retry_after_date=1``),
``etag_change_after=N``, ``weak_etag``, ``no_validators``, ``gzip``,
``redirect=N``, ``redirect_to=NAME``, ``cd=NAME``, ``cd_star=NAME``,
``rate=BPS``, ``wrong_range``, ``short``, ``slow_headers=S``,
``broken=KIND``, ``claim=SIZE``, ``ignore_range``, ``redirect_url=URL``,
``slow_rate=BPS``, ``straggle=BPS`` (+``straggle_conns=N``), ``moved_url=URL``
(the first K GETs are a 302 to URL: a range GET redirected after the probe).

Slow peers: ``rate=BPS`` paces every body; ``slow_rate=BPS`` paces only the
first K GETs (a server that trickles one byte every 20 s is
``slow_rate=0.05``).  ``straggle=BPS`` throttles whole *connections*: the
first ``straggle_conns`` (default 1) connections that ask for a range longer
than one byte with this key are served at BPS for every request they make,
as a bad path to one client port would; other connections run at full speed.

Replies that break HTTP/1.1 (first K GETs), ``broken=``: ``content_length``
(two Content-Length fields that disagree), ``nul`` (a NUL byte in a header
value), ``flood`` (about 200 KB of header fields, past any client's limit).
``claim=SIZE`` reports SIZE as the file's size (HEAD's Content-Length, every
Content-Range's complete length) whatever the content is.  ``ignore_range``
answers the first K GETs with the whole file (200, validators unchanged),
as a cache that ignores Range would.  ``redirect_url=URL`` answers every
request with a 302 to URL, whatever its scheme (``file:///etc/passwd``).

``RangeServer(tls=context)`` serves HTTPS instead, with a server-side
``ssl.SSLContext``: ``base_url`` is ``https://127.0.0.1:PORT`` and every fault
above works as over plain HTTP (a drop or stall ends the TCP connection without
a TLS close_notify; a normal close sends one).  Each connection's handshake runs
in its own handler thread, so a slow client never holds up the accept loop, and
a handshake the client aborts (it rejects our certificate, or speaks plain HTTP)
is counted in ``tls_failures`` and otherwise ignored.  ``accepted_connections``
counts TCP connections, which is what a test counts when a failure happens
before any HTTP request is sent.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import math
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

CHUNK = 64 * 1024
_XOR_FF = bytes(255 - i for i in range(256))  # translate table: b -> b ^ 0xFF
_UNSATISFIABLE = (-1, -1)
_RANGE_SPEC = re.compile(r"\s*(\d*)-(\d*)\s*", re.ASCII)
_QVALUE = re.compile(r"(?:^|;)\s*q\s*=\s*([0-9.]+)", re.ASCII | re.IGNORECASE)
_NOT_COUNTED = ("redirect", "redirect_to")
HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS client may take to finish its handshake


@dataclass
class RequestRecord:
    """One request as the server saw it.

    ``headers`` is a plain ``dict`` with lower-cased names (repeated fields
    joined by ``", "``): use ``rec.headers.get("range")``. ``status`` is
    ``None`` until the status line is sent (e.g. during ``slow_headers``).
    """

    method: str
    path: str  # path with query, as sent
    name: str | None  # file name for /f/<name>, else None
    headers: dict[str, str]
    client: tuple[str, int]  # peer address: equal ports mean a reused connection
    status: int | None = None
    started: float = field(default_factory=time.monotonic)  # time.monotonic()
    sent: int = 0  # body bytes written to the socket so far
    straggler: bool = False  # served at ``straggle=`` speed


@dataclass
class _Version:
    data: bytes
    etag: str  # strong entity-tag, quotes included
    last_modified: str
    gz: bytes | None = None


def _make_version(data: bytes, mtime: float) -> _Version:
    tag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
    return _Version(data, tag, formatdate(mtime, usegmt=True))


class _Faults:
    """The query string of one request, read as fault parameters."""

    def __init__(self, query: str) -> None:
        self.items = parse_qsl(query, keep_blank_values=True)
        self.q = dict(self.items)
        self.key = tuple(sorted((k, v) for k, v in self.items if k not in _NOT_COUNTED))

    def flag(self, k: str) -> bool:
        return k in self.q and self.q[k].lower() not in ("0", "false", "no")

    def integer(self, k: str, default: int = 0) -> int:
        return int(self.q[k]) if self.q.get(k) else default

    def number(self, k: str, default: float = 0.0) -> float:
        return float(self.q[k]) if self.q.get(k) else default

    def query(self, drop: tuple[str, ...] = (), **replace: str) -> str:
        """Re-encode the query without ``drop`` keys and with ``replace`` values."""
        pairs = [(k, replace.get(k, v)) for k, v in self.items if k not in drop]
        return urlencode(pairs)


def _accepts_gzip(value: str | None) -> bool:
    """Whether Accept-Encoding allows gzip (RFC 9110 §12.5.3); absent means no."""
    weights: dict[str, float] = {}
    for item in (value or "").split(","):
        coding, _, params = item.partition(";")
        q = _QVALUE.search(params)
        weights[coding.strip().lower()] = float(q[1]) if q else 1.0
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return weights[coding] > 0
    return False


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse one ``bytes=`` range (RFC 9110 §14.1.1) into inclusive (first, last).

    Returns None when the field must be ignored (other unit, bad syntax or
    several ranges: we answer 200) and ``_UNSATISFIABLE`` for a 416.
    """
    unit, sep, spec = value.partition("=")
    m = _RANGE_SPEC.fullmatch(spec)
    if not sep or unit.strip().lower() != "bytes" or m is None or m[1] == m[2] == "":
        return None
    if m[1] == "":  # suffix-range: the last n bytes; unsatisfiable if n=0 or empty
        n = int(m[2])
        return _UNSATISFIABLE if n == 0 or size == 0 else (max(0, size - n), size - 1)
    first = int(m[1])
    if m[2] and int(m[2]) < first:
        return None  # invalid range-spec: ignore the Range field
    last = int(m[2]) if m[2] else size - 1
    return _UNSATISFIABLE if first >= size else (first, min(last, size - 1))


def _if_range_matches(value: str, etag: str | None, lm: str | None) -> bool:
    """If-Range (RFC 9110 §13.1.5): strong ETag comparison, or exact date."""
    if value.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and value == etag
    return lm is not None and value == lm


def _if_match_matches(value: str, etag: str | None) -> bool:
    """If-Match (RFC 9110 §13.1.1): ``*`` or a strong match of one listed tag."""
    strong = etag is not None and not etag.startswith("W/")
    return value.strip() == "*" or strong and any(t.strip() == etag for t in value.split(","))


def _shutdown(conn: socket.socket, how: int) -> None:
    """shutdown(2) the connection, ignoring errors.

    On an ``SSLSocket`` this is the plain socket method on purpose:
    ``SSLSocket.shutdown`` also drops the TLS state, which the handler thread
    may be using at that moment (``stop()`` calls this from another thread).
    """
    with suppress(OSError):
        socket.socket.shutdown(conn, how)


def _disposition(cd: str | None, cd_star: str | None) -> str | None:
    """Content-Disposition (RFC 6266) with ``filename`` and/or ``filename*``."""
    parts = ["attachment"]
    if cd:  # quoted-string, sent as raw UTF-8 like many real servers do
        cd = cd.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'filename="{cd}"'.encode().decode("latin-1"))
    if cd_star:
        parts.append("filename*=UTF-8''" + quote(cd_star, safe=""))
    return "; ".join(parts) if len(parts) > 1 else None


def _broken_fields(kind: str | None, length: int) -> tuple[tuple[str, str], ...]:
    """Header fields that make a reply break HTTP/1.1 (``broken=KIND``); none for no KIND."""
    if not kind:
        return ()
    if kind == "content_length":  # RFC 9112 §6.3: a recipient must treat this as an error
        return (("Content-Length", str(length + 1)),)
    if kind == "nul":  # RFC 9110 §5.5: NUL is never allowed in a field value
        return (("X-Broken", "before\x00after"),)
    if kind == "flood":  # ~200 KB of fields: past h11's 100 KiB limit for a header section
        return tuple((f"X-Flood-{i}", "f" * 90) for i in range(2000))
    raise ValueError(f"unknown broken={kind!r}")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 32+ clients may connect at once
    owner: RangeServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip the slow getfqdn()
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        self.owner._accepted()
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients drop on purpose
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end eventually
    server: _HTTPServer
    _aborted = False  # set by _abort(): the connection ends without a TLS close_notify
    _straggler: bool | None = None  # for ``straggle=``: None until its first range GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        owner = self.server.owner
        conn: socket.socket = self.request
        if owner.tls is not None:
            # Handshake here, in this connection's thread, not in the accept loop.
            conn = owner.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            self.request = conn
        owner._connection(conn, opened=True)
        try:
            if isinstance(conn, ssl.SSLSocket):
                conn.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    conn.do_handshake()
                except BaseException:
                    owner._handshake(ok=False)
                    raise  # an OSError (SSLError): handle_error stays quiet
                owner._handshake(ok=True)
            super().setup()
        except BaseException:
            owner._connection(conn, opened=False)
            conn.close()
            raise

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            conn = self.connection
            self.server.owner._connection(conn, opened=False)
            if isinstance(conn, ssl.SSLSocket):
                self._close_tls(conn)

    def _close_tls(self, conn: ssl.SSLSocket) -> None:
        """End a TLS connection: close_notify (unless aborted), FIN, close.

        socketserver's own shutdown_request() only sees the plain socket,
        which ``wrap_socket`` detached, so the SSLSocket is closed here.  The
        close_notify is sent without waiting for the client's reply.
        """
        if not self._aborted:
            conn.settimeout(0)
            with suppress(OSError, ValueError):
                conn.unwrap()
            _shutdown(conn, socket.SHUT_WR)
        conn.close()

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        name = unquote(split.path[3:]) if split.path.startswith("/f/") else None
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self._rec = RequestRecord(self.command, self.path, name, headers, self.client_address)
        self._head = head
        generation = owner._begin(self._rec)
        try:
            self._serve(owner, name, _Faults(split.query))
        except OSError:  # the client went away, or the server is stopping
            self.close_connection = True
        finally:
            owner._end(generation)

    def _serve(self, owner: RangeServer, name: str | None, f: _Faults) -> None:
        head = self._head
        if name is None or name not in owner._files:
            return self._simple(404, b"not found\n")
        if (hops := f.integer("redirect")) > 0:
            q = f.query(redirect=str(hops - 1))
            # Odd hop counts get a path-relative Location, even ones an absolute URL.
            loc = f"{quote(name)}?{q}" if hops % 2 else f"{owner.base_url}/f/{quote(name)}?{q}"
            return self._simple(302, b"redirect\n", {"Location": loc})
        if target := f.q.get("redirect_to"):
            q = f.query(drop=_NOT_COUNTED)
            loc = f"{owner.base_url}/f/{quote(target)}" + (f"?{q}" if q else "")
            return self._simple(302, b"redirect\n", {"Location": loc})
        if location := f.q.get("redirect_url"):
            return self._simple(302, b"redirect\n", {"Location": location})

        index = owner._count((name, f.key), bump=not head)
        skip = f.integer("skip")
        faulted = not head and skip <= index < skip + f.integer("times", 1)
        if faulted and f.number("slow_headers") > 0 and owner._stop.wait(f.number("slow_headers")):
            raise ConnectionAbortedError("server stopping")
        if head and "nohead" in f.q:
            code = f.integer("nohead", 405)
            return self._simple(405 if code == 1 else code, b"", {"Allow": "GET"})
        if faulted and (moved := f.q.get("moved_url")):
            return self._simple(302, b"moved\n", {"Location": moved})
        if faulted and (code := f.integer("status")):
            extra: dict[str, str | None] = {}
            if f.q.get("retry_after"):
                extra["Retry-After"] = f.q["retry_after"]
            elif f.flag("retry_after_date"):
                extra["Retry-After"] = formatdate(math.ceil(time.time()) + 1, usegmt=True)
            return self._simple(code, f"fault status {code}\n".encode(), extra)

        change_after = f.integer("etag_change_after", -1)
        version = owner._version(name, 1 if 0 <= change_after <= index else 0)
        etag: str | None = ("W/" if f.flag("weak_etag") else "") + version.etag
        lm: str | None = version.last_modified
        if f.flag("no_validators"):
            etag = lm = None
        body = version.data
        gzipped = f.flag("gzip") and _accepts_gzip(self.headers.get("Accept-Encoding"))
        if gzipped:
            body = owner._gzip(version)
            etag = etag and etag[:-1] + '-gz"'  # another representation, another tag
        if (im := self.headers.get("If-Match")) is not None and not _if_match_matches(im, etag):
            return self._simple(412, b"precondition failed\n")

        norange, nolength = f.flag("norange"), f.flag("nolength")
        accept_ranges = "none" if f.flag("acceptranges_none") else "bytes"
        out = {  # headers with a None value are not sent
            "Content-Type": "application/octet-stream",
            "ETag": etag,
            "Last-Modified": lm,
            "Accept-Ranges": None if norange or nolength else accept_ranges,
            "Vary": "Accept-Encoding" if f.flag("gzip") else None,
            "Content-Encoding": "gzip" if gzipped else None,
            "Content-Disposition": _disposition(f.q.get("cd"), f.q.get("cd_star")),
        }

        size = len(body)
        span: tuple[int, int] | None = None
        rng = self.headers.get("Range")
        # Range applies to GET only (RFC 9110 §14.2) and only if If-Range matches.
        ignored = head or norange or nolength or gzipped or f.flag("acceptranges_none")
        ignored = ignored or (faulted and f.flag("ignore_range"))
        if rng is not None and not ignored:
            if_range = self.headers.get("If-Range")
            if if_range is None or _if_range_matches(if_range.strip(), etag, lm):
                span = _parse_range(rng, size)
        if span == _UNSATISFIABLE:
            out["Content-Range"] = f"bytes */{size}"  # RFC 9110 §15.5.17
            return self._simple(416, b"range not satisfiable\n", out)
        status, start, end = 200, 0, size - 1
        claimed = f.integer("claim", size)
        if span is not None:
            status, (start, end) = 206, span
            if f.flag("wrong_range") and size > 1:
                # Shift by +1, or by -1 at the end; a whole-file range loses byte 0.
                shift = 1 if end + 1 < size else -1 if start > 0 else 0
                start, end = start + (shift or 1), end + shift
            out["Content-Range"] = f"bytes {start}-{end}/{claimed}"  # RFC 9110 §14.4
        length = max(0, end - start + 1)
        chunked = nolength and f.flag("chunked")
        if chunked:
            out["Transfer-Encoding"] = "chunked"
        elif nolength:
            out["Connection"] = "close"  # the body is close-delimited
        else:
            out["Content-Length"] = str(length + (1000 if head and f.flag("headlies") else 0))
            if head and "claim" in f.q:
                out["Content-Length"] = str(claimed)
        if not head and "straggle" in f.q and self._straggler is None and span is not None and length > 1:
            self._straggler = owner._straggler((name, f.key), f.integer("straggle_conns", 1))
        self._start(status, out, _broken_fields(f.q.get("broken"), length) if faulted else ())
        if not head:
            self._send_body(owner, memoryview(body)[start : start + length], f, faulted, chunked)

    def _send_body(self, owner: RangeServer, mv: memoryview, f: _Faults, faulted: bool, chunked: bool) -> None:
        """Write the body in pieces, applying short/drop/stall/rate."""
        total = len(mv)
        stop_at = total - 1 if f.flag("short") and total else total
        if faulted and "drop" in f.q:
            stop_at = min(stop_at, f.integer("drop"))
        stall = f.number("stall") if faulted else 0.0
        if stall > 0:
            stop_at = min(stop_at, f.integer("stall_after"))
        rate = f.number("rate")
        if faulted and f.number("slow_rate") > 0:
            rate = f.number("slow_rate")
        if self._straggler:
            rate = f.number("straggle")
            self._rec.straggler = True
        piece = CHUNK if rate <= 0 else max(1, min(CHUNK, int(rate / 50)))
        sent, t0 = 0, time.monotonic()
        while sent < stop_at:
            n = min(piece, stop_at - sent)
            data = mv[sent : sent + n]
            if chunked:
                self.wfile.write(b"%x\r\n" % n + data + b"\r\n")
            else:
                self.wfile.write(data)
            sent += n
            self._rec.sent = sent
            # No pause after the last piece: the client has the whole body and
            # may start its next request, which must not overlap this one.
            if rate > 0 and sent < stop_at:
                delay = t0 + sent / rate - time.monotonic()
                if delay > 0 and owner._stop.wait(delay):
                    return self._abort()
        if stall > 0:
            owner._stop.wait(stall)  # hold the connection, send nothing
            return self._abort()
        if sent < total:
            return self._abort()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _abort(self) -> None:
        """Close the connection abruptly, mid-response (over TLS: no close_notify)."""
        self.close_connection = True
        self._aborted = True
        _shutdown(self.connection, socket.SHUT_RDWR)
        self.connection.close()

    def _start(
        self, status: int, headers: dict[str, str | None], extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._rec.status = status
        self.send_response(status)
        for k, v in headers.items():
            if v is not None:
                self.send_header(k, v)
        for k, v in extra:  # written as given: send_header checks nothing
            self.send_header(k, v)
        self.end_headers()

    def _simple(self, status: int, body: bytes, headers: dict[str, str | None] | None = None) -> None:
        out: dict[str, str | None] = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        out["Content-Length"] = str(len(body))
        self._start(status, out)
        if not self._head and body:
            self.wfile.write(body)


class RangeServer:
    """An in-memory HTTP/1.1 range server on 127.0.0.1, run in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        tls: a server-side ``ssl.SSLContext`` (certificate loaded) to serve
            HTTPS with; ``None`` serves plain HTTP.
        host: the IPv4 address to listen on instead of 127.0.0.1 (the
            compose test listens on its container network's gateway).
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._files: dict[str, list[_Version | None]] = {}
        self._requests: list[RequestRecord] = []
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._stragglers: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}  # connections so far
        self._conns: set[socket.socket] = set()
        self._accepts = self._handshakes = self._tls_failures = 0
        # Requests still running at a reset do not count towards max_concurrent.
        self._generation = self._active = self._max = 0
        self._stop = threading.Event()
        self._httpd = _HTTPServer((host, 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"{'https' if tls is not None else 'http'}://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start serving in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"rangeserver-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled handlers wake up and open connections are shut."""
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn, socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_file(self, name: str, data: bytes) -> None:
        """Serve ``data`` at ``/f/<name>``, replacing any earlier file of that name."""
        version = _make_version(bytes(data), time.time() - 86400)
        with self._lock:
            self._files[name] = [version, None]

    def url(self, name: str, **faults: object) -> str:
        """The URL of file ``name`` with ``faults`` encoded in the query string."""
        q = urlencode({k: int(v) if isinstance(v, bool) else v for k, v in faults.items()})
        return f"{self.base_url}/f/{quote(name)}" + (f"?{q}" if q else "")

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log since the last reset, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, name: str) -> list[RequestRecord]:
        """The logged requests for file ``name``."""
        return [r for r in self.requests if r.name == name]

    @property
    def max_concurrent(self) -> int:
        """The most requests served at once among those begun since the last reset."""
        return self._max

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now."""
        with self._lock:
            return len(self._conns)

    @property
    def accepted_connections(self) -> int:
        """TCP connections accepted since the last reset (TLS or not, handshake done or not)."""
        with self._lock:
            return self._accepts

    @property
    def tls_handshakes(self) -> int:
        """TLS handshakes completed since the last reset."""
        with self._lock:
            return self._handshakes

    @property
    def tls_failures(self) -> int:
        """TLS handshakes that failed since the last reset (counted once the server notices)."""
        with self._lock:
            return self._tls_failures

    def reset(self) -> None:
        """Clear the request log, fault and connection counters, and ``max_concurrent``."""
        with self._lock:
            self._requests.clear()
            self._counts.clear()
            self._stragglers.clear()
            self._generation += 1
            self._active = self._max = 0
            self._accepts = self._handshakes = self._tls_failures = 0

    # Internals used by the handler.

    def _version(self, name: str, index: int) -> _Version:
        with self._lock:
            versions = self._files[name]
            if versions[index] is None:  # the changed content: same size, new bytes
                old = versions[0]
                assert old is not None
                versions[1] = _make_version(old.data.translate(_XOR_FF), time.time() - 3600)
            version = versions[index]
            assert version is not None
            return version

    def _gzip(self, version: _Version) -> bytes:
        with self._lock:
            if version.gz is None:
                version.gz = gzip.compress(version.data, compresslevel=1, mtime=0)
            return version.gz

    def _count(self, key: tuple[str, tuple[tuple[str, str], ...]], bump: bool) -> int:
        with self._lock:
            n = self._counts.get(key, 0)
            if bump:
                self._counts[key] = n + 1
            return n

    def _straggler(self, key: tuple[str, tuple[tuple[str, str], ...]], conns: int) -> bool:
        """Whether a connection making its first range GET for ``key`` is one of the slow ones."""
        with self._lock:
            n = self._stragglers.get(key, 0)
            self._stragglers[key] = n + 1
            return n < conns

    def _begin(self, rec: RequestRecord) -> int:
        with self._lock:
            self._requests.append(rec)
            self._active += 1
            self._max = max(self._max, self._active)
            return self._generation

    def _end(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._active -= 1

    def _accepted(self) -> None:
        with self._lock:
            self._accepts += 1

    def _handshake(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._handshakes += 1
            else:
                self._tls_failures += 1

    def _connection(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            (self._conns.add if opened else self._conns.discard)(conn)
