"""The fast path through an http:// proxy: ``Proxy`` (address, credentials), ``CONNECT`` tunnels, absolute form.

Which proxy a URL takes is decided elsewhere (``network.proxy_for``); this
holds how a connection goes through it: https through a ``CONNECT`` tunnel
(RFC 9110 §9.3.6), http as absolute-form requests (RFC 9112 §3.2.2).
"""

from __future__ import annotations

import base64
import typing
from urllib.parse import unquote, urlsplit

import httpcore

from .backend import DirectStream

__all__ = ["Proxy", "absolute_form", "tunnel"]


class Proxy(typing.NamedTuple):
    """An http:// proxy: where it listens and the ``Proxy-Authorization`` its URL's user info makes."""

    url: str
    host: str
    port: int
    authorization: bytes | None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """``http://[user:password@]host[:port]`` (port 1080 by default, as in curl)."""
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = b"Basic " + base64.b64encode(secret)
        return cls(url, parts.hostname or "", parts.port or 1080, auth)


async def tunnel(stream: DirectStream, proxy: Proxy, host: str, port: int, timeout: float | None) -> None:
    """Ask ``proxy`` for a tunnel to ``host:port`` (``CONNECT``, RFC 9110 §9.3.6).

    Raises:
        httpcore.ProxyError: the proxy answered anything but 2xx, or closed.
    """
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
    if proxy.authorization is not None:
        head += b"Proxy-Authorization: " + proxy.authorization + b"\r\n"
    await stream.write(head + b"\r\n", timeout)
    # Nothing follows the proxy's answer until the TLS handshake starts, so
    # reading up to the blank line reads exactly the answer.
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = await stream.receive(4096, timeout)
        if not data or len(answer) > 65536:
            raise httpcore.ProxyError(f"the proxy closed the connection instead of answering CONNECT {target}")
        answer += data
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
        raise httpcore.ProxyError(f"the proxy answered {status_line!r} to CONNECT {target}")


def absolute_form(request: httpcore.Request, proxy: Proxy) -> httpcore.Request:
    """``request`` as a forward proxy takes it: the whole URL as the target (RFC 9112 §3.2.2)."""
    url = request.url
    default = 80 if url.scheme == b"http" else 443
    authority = url.host if url.port in (None, default) else url.host + b":%d" % url.port
    headers = list(request.headers)
    if proxy.authorization is not None:
        headers.append((b"Proxy-Authorization", proxy.authorization))
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(scheme=url.scheme, host=url.host, port=url.port,
                         target=url.scheme + b"://" + authority + url.target),
        headers=headers,
        content=request.stream,
        extensions=request.extensions,
    )  # fmt: skip
