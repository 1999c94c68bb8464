"""Secrets stay out of logs: URLs and headers are redacted."""

from __future__ import annotations

import pytest

from rangefetch import redact_headers, redact_url
from rangefetch.redact import REDACTED


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/f.bin", "https://example.com/f.bin"),
        ("https://user:hunter2@example.com/f", f"https://user:{REDACTED}@example.com/f"),
        ("https://user:p%40ss@example.com:8443/f", f"https://user:{REDACTED}@example.com:8443/f"),
        ("https://ghp_tokenvalue@github.com/f", f"https://{REDACTED}@github.com/f"),
        ("https://:secret@example.com/f", f"https://{REDACTED}@example.com/f"),
        ("https://h/f?page=2&lang=en", "https://h/f?page=2&lang=en"),
        ("https://h/f?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1&x=1",
         f"https://h/f?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}&x=1"),
        ("https://h/f?token=t&api_key=k&password=p&auth=a&sessionid=s&Secret=z",
         f"https://h/f?token={REDACTED}&api_key={REDACTED}&password={REDACTED}&auth={REDACTED}"
         f"&sessionid={REDACTED}&Secret={REDACTED}"),
        ("https://h/f?sig=", f"https://h/f?sig={REDACTED}"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_returns_a_secret() -> None:
    url = "https://alice:s3cr3t@h/f?Signature=s1gn&keep=visible"
    shown = redact_url(url)
    assert "s3cr3t" not in shown and "s1gn" not in shown
    assert "alice" in shown and "keep=visible" in shown


def test_unparseable_url_is_fully_redacted() -> None:
    assert redact_url("http://[::1") == REDACTED


def test_redact_headers() -> None:
    headers = {
        "Authorization": "Bearer x",
        "proxy-authorization": "Basic y",
        "Cookie": "a=b",
        "X-Api-Key": "k",
        "X-Auth-Token": "t",
        "Range": "bytes=0-1",
        "User-Agent": "rangefetch",
    }
    redacted = redact_headers(headers)
    assert redacted == {
        "Authorization": REDACTED,
        "proxy-authorization": REDACTED,
        "Cookie": REDACTED,
        "X-Api-Key": REDACTED,
        "X-Auth-Token": REDACTED,
        "Range": "bytes=0-1",
        "User-Agent": "rangefetch",
    }
    assert headers["Authorization"] == "Bearer x"  # a copy; the original is untouched
