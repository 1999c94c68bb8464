"""Keeping secrets out of logs, error messages and ``status`` output.

Header values are never logged at all; these helpers cover the two places a
secret can hide in plain sight: the URL's userinfo and its query string
(presigned URLs carry signatures and tokens there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["SECRET_HEADERS", "redact_headers", "redact_url"]

REDACTED = "REDACTED"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"})
_SECRET_PARAM = re.compile(r"sig|token|key|secret|pass|auth|credential|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without a password (or a lone user name) and with secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a password the user part is often the credential itself
        # (https://TOKEN@host/...), so it goes too.
        netloc = f"{user}:{REDACTED}@{hostport}" if user and colon else f"{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with the values of credential-bearing headers replaced."""
    return {k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}
