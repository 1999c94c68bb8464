"""HTTP range rules (rangefetch.protocol): pure functions of header values."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from rangefetch.protocol import (
    ContentRange,
    is_strong_etag,
    is_transient_status,
    parse_content_length,
    parse_content_range,
    parse_retry_after,
)

# --- Content-Range (RFC 9110 §14.4) -------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/1000", ContentRange(0, 99, 1000)),
        ("bytes 999-999/1000", ContentRange(999, 999, 1000)),
        ("BYTES 5-9/10", ContentRange(5, 9, 10)),
        ("  bytes  0-0 / 1  ", ContentRange(0, 0, 1)),
        ("bytes 0-99/*", ContentRange(0, 99, None)),
        ("bytes */1000", ContentRange(None, None, 1000)),
        ("bytes */0", ContentRange(None, None, 0)),
    ],
)
def test_content_range_valid(value: str, expected: ContentRange) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes",
        "bytes 0-99",
        "bytes 0-99/",
        "items 0-99/1000",
        "bytes=0-99/1000",
        "bytes -5-99/1000",
        "bytes 0--99/1000",
        "bytes 0-99/1000, bytes 100-199/1000",
        "bytes */*",
        "bytes a-b/c",
        "bytes ٠-٩/١٠",  # non-ASCII digits
        "bytes 10-5/100",  # end before start
        "bytes 0-1000/1000",  # end at the complete length
        "bytes 0-5000/1000",  # end past it
        "bytes 0-0/0",
    ],
)
def test_content_range_malformed_or_invalid_is_none(value: str | None) -> None:
    assert parse_content_range(value) is None


# --- Content-Length ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"content-length": "1234"}, 1234),
        ({"content-length": " 0 "}, 0),
        ({}, None),
        ({"content-length": "-1"}, None),
        ({"content-length": "12, 12"}, None),
        ({"content-length": "1e3"}, None),
        ({"content-length": "²"}, None),  # isdigit() but not a number int() reads
        ({"content-length": "50", "content-encoding": "identity"}, 50),
        ({"content-length": "50", "content-encoding": " Identity "}, 50),
        ({"content-length": "50", "content-encoding": ""}, 50),
        # The length of an encoded body is not the file's size (§8.4, §8.6).
        ({"content-length": "50", "content-encoding": "gzip"}, None),
        ({"content-length": "50", "content-encoding": "br"}, None),
    ],
)
def test_content_length(headers: dict[str, str], expected: int | None) -> None:
    assert parse_content_length(headers) == expected


# --- Retry-After (§10.2.3) ------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("120", 120.0), (" 7 ", 7.0)])
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_http_date_uses_the_injected_now() -> None:
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), now=NOW) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=NOW) == 30.0
    # A date in the past means "now", not a negative wait.
    assert parse_retry_after(formatdate(NOW - 3600, usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "²", "Tue, 99 Foo 2023", "12:00"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


# --- statuses and validators ---------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 507, 599])
def test_transient_statuses(status: int) -> None:
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [200, 206, 301, 400, 401, 403, 404, 410, 412, 416, 501, 505, 600])
def test_permanent_statuses(status: int) -> None:
    assert not is_transient_status(status)


@pytest.mark.parametrize(
    ("etag", "strong"),
    [('"abc"', True), ('""', True), ('W/"abc"', False), ("abc", False), (None, False), ("", False)],
)
def test_strong_etag(etag: str | None, strong: bool) -> None:
    assert is_strong_etag(etag) is strong
