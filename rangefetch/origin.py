"""Origins (RFC 6454): which of the user's request headers may go to which URL.

The user's headers (``-H``) are given for the URL they typed.  The
credentials among them, ``CROSS_ORIGIN_DROPPED``, go to that origin (scheme,
host and port) only, as curl's custom headers do since 7.83 (CVE-2022-27776):
a redirect to another origin leaves them behind.  Once a redirect chain has
left the origin they stay behind for the rest of it, even where it comes back
(curl sends them again there): the way back was chosen by another host.

``probe`` applies the rule hop by hop; ``headers_for`` to every request sent
after the probe, to its final URL, in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from .probe import RemoteFile

__all__ = ["CROSS_ORIGIN_DROPPED", "headers_for", "same_origin", "without_credentials"]

# Headers that carry the user's credentials for the URL they gave: never sent
# to another origin (curl drops the same three since 7.83, CVE-2022-27776).
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})


def same_origin(url: str, other: str) -> bool:
    """Whether ``url`` and ``other`` have the same scheme, host and port (RFC 6454 §4).

    A missing port is the scheme's default; a URL that cannot be parsed has
    no origin in common with anything.
    """
    try:
        a, b = httpx.URL(url), httpx.URL(other)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return (a.scheme, a.raw_host.lower(), _port(a)) == (b.scheme, b.raw_host.lower(), _port(b))


def _port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)


def without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without ``Authorization``, ``Cookie`` and ``Proxy-Authorization``, in any case of their names."""
    return {k: v for k, v in headers.items() if k.lower() not in CROSS_ORIGIN_DROPPED}


def headers_for(remote: RemoteFile, headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's ``headers`` that a request to ``remote.final_url`` may carry.

    They were given for ``remote.url``: when any of the probe's redirects
    (``remote.redirects``, then ``remote.final_url``) left that origin, the
    credentials stay behind, even if the chain came back to it, so a token
    for one host never reaches another, nor what another host chose to send
    it to.  Other headers pass as given.
    """
    chosen = dict(headers or {})
    if all(same_origin(remote.url, hop) for hop in (*remote.redirects, remote.final_url)):
        return chosen
    return without_credentials(chosen)
