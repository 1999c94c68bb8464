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


# Where a server's redirect commonly sends a download: presigned URLs of the
# big object stores and CDNs, some with credentials in the user part.
@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("https://bucket.s3.amazonaws.com/f?X-Amz-Credential=AKIA1%2F2&X-Amz-Security-Token=IQo9&X-Amz-Signature=5ig",
         ("AKIA1", "IQo9", "5ig")),
        ("https://storage.googleapis.com/b/f?X-Goog-Credential=sa%40p&X-Goog-Signature=g00g",
         ("sa%40p", "sa@p", "g00g")),
        ("https://acct.blob.core.windows.net/c/f?sv=2022&sig=AzUr3%3D&se=2030", ("AzUr3",)),
        ("https://d1.cloudfront.net/f?Expires=1&Signature=Cl0ud~&Key-Pair-Id=APKA9", ("Cl0ud", "APKA9")),
        ("https://cdn.example/f?access_token=at0k&apikey=ak3y", ("at0k", "ak3y")),
        ("https://mirror:m1rr0r-pw@cdn.example:8443/f", ("m1rr0r-pw",)),
    ],
)
def test_redirect_targets_are_redacted(url: str, secrets: tuple[str, ...]) -> None:
    shown = redact_url(url)
    for secret in secrets:
        assert secret not in shown
    assert redact_url(shown) == shown  # stored redacted, shown redacted again: no change


def test_redact_url_is_idempotent() -> None:
    for url in ("https://user:pw@h/f?token=t&x=1", "https://tok@h/f", "https://h/f?sig="):
        once = redact_url(url)
        assert redact_url(once) == once
