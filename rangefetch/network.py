"""The network path of a request: which proxy it takes and which certificates it trusts.

Both follow what curl and aria2c users expect:

* **Proxies.** ``--proxy`` (``Settings.proxy``) is used for every URL; else
  the scheme's own variable (``HTTPS_PROXY`` for https://, ``HTTP_PROXY`` for
  http://), else ``ALL_PROXY``; all are read in either case at the entry
  point.  ``NO_PROXY`` (``--noproxy``) lists hosts that go direct: ``*`` for
  all, a host or IP, a domain (``example.com`` and ``.example.com`` both
  cover its subdomains), or an IP network (``10.0.0.0/8``), as curl 7.86+
  reads it.  A proxy that is configured is always used: when it cannot be
  reached the download fails (``ProxyError``), it never goes direct instead.
* **Trust.** ``--insecure`` skips verification; else ``--ca-certificate``
  (``Settings.ca_certificate``) replaces the default CAs, as curl's
  ``--cacert`` does; else ``SSL_CERT_FILE``/``SSL_CERT_DIR``; else certifi's
  bundle (httpx's default).  A download may bring its own CA certificates
  as PEM text (distributed mode stores the producer's ``--ca-certificate``
  with the download, since the file is on the producer's host).

* **The local address** (``--interface``, ``Settings.interface``): every
  connection, to a server or to a proxy, is made from this IP address of
  this host, as curl's and aria2c's ``--interface ADDR`` do.  Only an IP
  literal is taken (IPv4, or IPv6 with an optional ``%scope``); an interface
  name (``eth0``) or a host name is refused with one line, since an
  interface may have several addresses and a name may resolve to several:
  give the address (``ip -brief address`` lists them).  It is checked once,
  before any request, by binding a socket to it: an address that is not
  this host's fails at once (``UsageError``), not as a connection error
  retried for every range.  Servers are then reached only over the
  address's own family (an IPv4 address connects to IPv4 addresses only).

Nothing here reads the environment: everything comes from ``Settings``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import certifi

from .errors import UsageError
from .redact import redact_url
from .settings import Settings

__all__ = [
    "Trust",
    "bind_without_port",
    "check_interface",
    "check_network",
    "check_proxy",
    "proxy_for",
    "read_ca_pem",
    "ssl_context",
]

PROXY_SCHEMES = ("http",)
# Linux's IP_BIND_ADDRESS_NO_PORT (Python 3.12 names it; its value is 24).
_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def proxy_for(url: str, settings: Settings) -> str | None:
    """The proxy URL to reach ``url`` through, or ``None`` to connect directly.

    Raises:
        UsageError: the proxy URL is not an ``http://`` URL with a host and port.
    """
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if _bypassed(host, settings.no_proxy):
        return None
    scheme_proxy = settings.https_proxy if scheme == "https" else settings.http_proxy if scheme == "http" else None
    proxy = settings.proxy or scheme_proxy or settings.all_proxy
    return check_proxy(proxy) if proxy else None


def check_proxy(proxy: str) -> str:
    """``proxy`` as a full URL (``host:port`` alone means ``http://host:port``, as in curl).

    Raises:
        UsageError: not an http:// proxy with a host, or a bad port.
    """
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    try:
        parts = urlsplit(proxy)
        _ = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid proxy {redact_url(proxy)!r}: {exc}") from exc
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise UsageError(f"unsupported proxy scheme {parts.scheme}:// in {redact_url(proxy)!r}: use an http:// proxy")
    if not parts.hostname:
        raise UsageError(f"invalid proxy {redact_url(proxy)!r}: no host")
    return proxy


def _bypassed(host: str, no_proxy: str | None) -> bool:
    """Whether ``host`` is listed in ``no_proxy`` (curl's rules, see the module docstring)."""
    if not no_proxy:
        return False
    host = host.strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower().strip("[]").rstrip(".")
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry.lstrip(".").split(":")[0]
        if host == domain or host.endswith("." + domain):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Trust:
    """Which TLS certificates to accept.

    ``ca_pem`` (PEM text) wins over ``ca_file``/``ca_dir``; with none of them
    certifi's bundle is used.  ``insecure`` accepts any certificate for any
    name.
    """

    insecure: bool = False
    ca_file: Path | None = None
    ca_dir: Path | None = None
    ca_pem: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, ca_pem: str | None = None, insecure: bool = False) -> Trust:
        """The trust ``settings`` describe; ``ca_pem`` and ``insecure`` are a download's own additions."""
        ca_file, ca_dir = settings.ssl_cert_file, settings.ssl_cert_dir
        if settings.ca_certificate is not None:
            ca_file, ca_dir = settings.ca_certificate, None
        return cls(insecure=insecure or settings.insecure, ca_file=ca_file, ca_dir=ca_dir, ca_pem=ca_pem)


def ssl_context(trust: Trust) -> ssl.SSLContext:
    """A client ``SSLContext`` for ``trust``: TLS 1.2 or later, HTTP/1.1 by ALPN.

    Raises:
        UsageError: a CA file or directory cannot be read or holds no certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if trust.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        if trust.ca_pem is not None:
            ctx.load_verify_locations(cadata=trust.ca_pem)
        elif trust.ca_file is not None or trust.ca_dir is not None:
            ctx.load_verify_locations(
                cafile=str(trust.ca_file) if trust.ca_file else None,
                capath=str(trust.ca_dir) if trust.ca_dir else None,
            )
        else:
            ctx.load_verify_locations(cafile=certifi.where())
    except (OSError, ssl.SSLError, ValueError) as exc:
        where = "the CA certificates given" if trust.ca_pem is not None else str(trust.ca_file or trust.ca_dir)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot load CA certificates from {where}: {detail}") from exc
    return ctx


def read_ca_pem(path: Path) -> str:
    """The PEM text of the CA file at ``path``, checked to hold at least one certificate.

    Raises:
        UsageError: the file cannot be read or holds no certificate.
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read CA certificate {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    ssl_context(Trust(ca_pem=text))
    return text


def check_network(settings: Settings) -> None:
    """Check the proxy URLs, CA certificates and local address of ``settings`` before any request.

    Raises:
        UsageError: a proxy URL is malformed, the CA certificates cannot be
            loaded, or the ``interface`` is not an address of this host.
    """
    for proxy in (settings.proxy, settings.https_proxy, settings.http_proxy, settings.all_proxy):
        if proxy:
            check_proxy(proxy)
    ssl_context(Trust.from_settings(settings))
    if settings.interface:
        check_interface(settings.interface)


def check_interface(interface: str) -> str:
    """``interface`` as the local address to connect from, once a socket could be bound to it.

    Raises:
        UsageError: not an IP address (an interface or host name), or not
            one of this host's (the bind fails: ``EADDRNOTAVAIL``).
    """
    text = interface.strip()
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise UsageError(
            f"--interface {interface!r} is not an IP address: give the address to connect from, e.g. "
            "--interface 192.0.2.10 (interface and host names are not taken; `ip -brief address` lists them)"
        ) from None
    local = str(address)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            bind_without_port(sock, local)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--interface {local} is not an address of this host ({exc.strerror})") from exc
        raise UsageError(f"cannot connect from --interface {local}: {exc.strerror or exc}") from exc
    return local


def bind_without_port(sock: socket.socket, address: str) -> None:
    """Bind ``sock`` to the local ``address``, leaving the port to ``connect``.

    With ``IP_BIND_ADDRESS_NO_PORT`` (Linux) the port is picked when the
    socket connects, unique per destination, instead of at ``bind`` among
    all the ports in use, so many connections from one address do not run
    out of ports.  Elsewhere the bind takes a port at once.

    Raises:
        OSError: the address is not this host's (``EADDRNOTAVAIL``), or another bind error.
    """
    try:
        sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass  # not Linux: bind takes a port now
    sock.bind((address, 0))
