"""HTTP rules for range requests, kept apart from I/O.

Everything here is pure: it reads header values and returns facts or raises
one of our errors.  Section numbers refer to RFC 9110 (HTTP Semantics).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ContentRange",
    "is_strong_etag",
    "is_transient_status",
    "parse_content_length",
    "parse_content_range",
    "parse_retry_after",
]

# §15.5 / §15.6: statuses worth retrying.  408 and 425 are the server asking
# us to try again; 429 is rate limiting (RFC 6585 §4); 5xx are server-side
# failures, except 501 and 505 which say "this server can never do that".
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_PERMANENT_5XX = frozenset({501, 505})


def is_transient_status(status: int) -> bool:
    """Whether a response with this status is worth retrying."""
    return status in _TRANSIENT_STATUSES or (500 <= status < 600 and status not in _PERMANENT_5XX)


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed ``Content-Range`` header (§14.4): ``start``/``end`` inclusive, or
    ``None`` for the unsatisfied form ``bytes */size``; ``size`` is ``None`` for ``/*``."""

    start: int | None
    end: int | None
    size: int | None


_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE | re.ASCII)


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a ``Content-Range`` value; ``None`` when it is missing or malformed."""
    if value is None:
        return None
    match = _CONTENT_RANGE_RE.match(value)
    if not match:
        return None
    first, last, size = match.groups()
    total = None if size == "*" else int(size)
    if first is None:
        return ContentRange(None, None, total) if total is not None else None
    start, end = int(first), int(last)
    # §14.4: a range whose end precedes its start, or lies past the
    # complete length, is invalid and must be treated as absent.
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def parse_content_length(headers: Mapping[str, str]) -> int | None:
    """The body length the headers promise, or ``None`` when they promise none.

    A length next to a non-identity ``Content-Encoding`` describes the encoded
    body, not the file, so it is not a file size (§8.4, §8.6).
    """
    encoding = headers.get("content-encoding", "identity").strip().lower()
    value = headers.get("content-length")
    if value is None or encoding not in ("", "identity"):
        return None
    value = value.strip()
    return int(value) if _is_digits(value) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (§10.2.3): delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if _is_digits(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _is_digits(value: str) -> bool:
    # str.isdigit() alone accepts "²" and other non-ASCII digits, which int() rejects.
    return value.isascii() and value.isdigit()


def is_strong_etag(etag: str | None) -> bool:
    """Whether ``etag`` is a strong entity tag (§8.8.3), usable in ``If-Range``."""
    return etag is not None and not etag.startswith("W/") and etag.startswith('"')
