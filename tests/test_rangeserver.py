"""Tests of the test range server itself, over real sockets."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import threading
import time
from email.message import Message
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import pytest
from rangeserver import RangeServer, _accepts_gzip, _parse_range

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file("d", DATA)
    server.add_file("empty", b"")
    return server


def request(
    url: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5,
) -> tuple[int, Message, bytes]:
    """One request on a fresh connection; returns status, headers, body."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def truncated(url: str, headers: dict[str, str] | None = None) -> bytes:
    """GET that must end in a truncated body; returns the partial body."""
    with pytest.raises(http.client.IncompleteRead) as info:
        request(url, headers)
    return info.value.partial


# --- normal behaviour --------------------------------------------------------


def test_full_get_and_head(srv: RangeServer) -> None:
    status, h, body = request(srv.url("d"))
    assert status == 200 and hashlib.sha256(body).hexdigest() == SHA
    assert h["Accept-Ranges"] == "bytes"
    assert h["Content-Type"] == "application/octet-stream"
    assert h["ETag"] == '"' + hashlib.sha1(DATA).hexdigest()[:16] + '"'
    assert parsedate_to_datetime(h["Last-Modified"]).timestamp() < time.time()
    status, hh, body = request(srv.url("d"), method="HEAD")
    assert (status, body, hh["Content-Length"]) == (200, b"", str(len(DATA)))
    assert hh["ETag"] == h["ETag"] and hh["Last-Modified"] == h["Last-Modified"]


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("BYTES = 7-7", 7, 7),
        ("bytes=299990-999999999", 299990, len(DATA) - 1),
        ("bytes=-999999999", 0, len(DATA) - 1),
    ],
)
def test_single_ranges(srv: RangeServer, spec: str, first: int, last: int) -> None:
    status, h, body = request(srv.url("d"), {"Range": spec})
    assert status == 206 and body == DATA[first : last + 1]
    assert h["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert h["Content-Length"] == str(last - first + 1)


@pytest.mark.parametrize("spec", ["bytes=300000-", "bytes=-0", "bytes=400000-400010"])
def test_unsatisfiable_range(srv: RangeServer, spec: str) -> None:
    status, h, _ = request(srv.url("d"), {"Range": spec})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x"])
def test_multi_or_invalid_range_gets_full_body(srv: RangeServer, spec: str) -> None:
    status, h, body = request(srv.url("d"), {"Range": spec})
    assert status == 200 and body == DATA and "Content-Range" not in h


def test_range_ignored_for_head(srv: RangeServer) -> None:
    status, h, _ = request(srv.url("d"), {"Range": "bytes=0-9"}, method="HEAD")
    assert status == 200 and h["Content-Length"] == str(len(DATA))


def test_empty_file(srv: RangeServer) -> None:
    for method in ("GET", "HEAD"):
        status, h, body = request(srv.url("empty"), method=method)
        assert (status, h["Content-Length"], body) == (200, "0", b"")
    for spec in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        status, h, _ = request(srv.url("empty"), {"Range": spec})
        assert status == 416 and h["Content-Range"] == "bytes */0"


def test_unknown_file_is_404(srv: RangeServer) -> None:
    assert request(srv.url("nope"))[0] == 404
    assert request(f"{srv.base_url}/other")[0] == 404


def test_if_range(srv: RangeServer) -> None:
    _, h, _ = request(srv.url("d"), method="HEAD")
    rng = {"Range": "bytes=0-9"}
    for validator, status in [
        (h["ETag"], 206),
        (h["Last-Modified"], 206),
        ('"stale"', 200),
        ("W/" + h["ETag"], 200),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
    ]:
        got, _, body = request(srv.url("d"), {**rng, "If-Range": validator})
        assert got == status
        assert body == (DATA[:10] if status == 206 else DATA)


def test_if_match(srv: RangeServer) -> None:
    _, h, _ = request(srv.url("d"), method="HEAD")
    assert request(srv.url("d"), {"If-Match": '"nope"'})[0] == 412
    assert request(srv.url("d"), {"If-Match": f'"x", {h["ETag"]}'})[0] == 200
    assert request(srv.url("d"), {"If-Match": "*"})[0] == 200


def test_request_log_and_keepalive(srv: RangeServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for spec in ("bytes=0-0", "bytes=1-1"):
        conn.request("GET", "/f/d?key=ka", headers={"Range": spec, "X-Test": "a"})
        assert conn.getresponse().read() == DATA[int(spec[-1]) : int(spec[-1]) + 1]
    assert srv.open_connections == 1
    conn.close()
    recs = srv.requests_for("d")
    assert [(r.method, r.path, r.status) for r in recs] == [("GET", "/f/d?key=ka", 206)] * 2
    assert recs[0].headers["range"] == "bytes=0-0" and recs[0].headers["x-test"] == "a"
    assert recs[0].client == recs[1].client  # one reused connection
    srv.reset()
    assert srv.requests == [] and srv.max_concurrent == 0


def test_url_encoding(srv: RangeServer) -> None:
    url = srv.url("d", norange=True, cd="../a b.txt")
    assert url == f"{srv.base_url}/f/d?norange=1&cd=..%2Fa+b.txt"
    assert srv.url("d") == f"{srv.base_url}/f/d"


# --- fault modes --------------------------------------------------------------


def test_norange(srv: RangeServer) -> None:
    status, h, body = request(srv.url("d", norange=1), {"Range": "bytes=0-9"})
    assert status == 200 and body == DATA and "Accept-Ranges" not in h


def test_acceptranges_none(srv: RangeServer) -> None:
    status, h, body = request(srv.url("d", acceptranges_none=1), {"Range": "bytes=0-9"})
    assert status == 200 and body == DATA and h["Accept-Ranges"] == "none"


@pytest.mark.parametrize("chunked", [0, 1])
def test_nolength(srv: RangeServer, chunked: int) -> None:
    url = srv.url("d", nolength=1, chunked=chunked)
    status, h, body = request(url, {"Range": "bytes=0-9"})
    assert status == 200 and body == DATA and "Content-Length" not in h
    if chunked:
        assert h["Transfer-Encoding"] == "chunked"
    else:
        assert h["Connection"] == "close"
    status, h, _ = request(url, method="HEAD")
    assert status == 200 and "Content-Length" not in h


@pytest.mark.parametrize(("value", "code"), [(1, 405), (405, 405), (501, 501), (403, 403)])
def test_nohead(srv: RangeServer, value: int, code: int) -> None:
    assert request(srv.url("d", nohead=value), method="HEAD")[:3:2] == (code, b"")
    assert request(srv.url("d", nohead=value))[::2] == (200, DATA)


def test_headlies(srv: RangeServer) -> None:
    _, h, _ = request(srv.url("d", headlies=1), method="HEAD")
    assert h["Content-Length"] == str(len(DATA) + 1000)
    _, h, body = request(srv.url("d", headlies=1))
    assert h["Content-Length"] == str(len(DATA)) and body == DATA


def test_drop_first_k(srv: RangeServer) -> None:
    url = srv.url("d", drop=1000, times=2)
    for _ in range(2):
        assert truncated(url, {"Range": "bytes=100-"}) == DATA[100:1100]
    assert request(url, {"Range": "bytes=100-"})[2] == DATA[100:]
    assert truncated(srv.url("d", drop=1000, times=2, key="k")) == DATA[:1000]
    assert [r.status for r in srv.requests_for("d")] == [206, 206, 206, 200]


def test_drop_zero_bytes(srv: RangeServer) -> None:
    assert truncated(srv.url("d", drop=0, key="z")) == b""


def test_stall(srv: RangeServer) -> None:
    url = srv.url("d", stall=0.3, stall_after=100)
    t0 = time.monotonic()
    assert truncated(url) == DATA[:100]
    assert time.monotonic() - t0 >= 0.29
    assert request(url)[2] == DATA


def test_status_with_retry_after(srv: RangeServer) -> None:
    url = srv.url("d", status=503, retry_after=7)
    status, h, body = request(url)
    assert status == 503 and h["Retry-After"] == "7" and body
    assert h["Content-Length"] == str(len(body))
    assert request(url, method="HEAD")[0] == 200  # HEAD neither faulted nor counted
    assert request(url)[::2] == (200, DATA)


def test_status_retry_after_date(srv: RangeServer) -> None:
    status, h, _ = request(srv.url("d", status=429, retry_after_date=1))
    delay = parsedate_to_datetime(h["Retry-After"]).timestamp() - time.time()
    assert status == 429 and 0 < delay <= 2


def test_permanent_status(srv: RangeServer) -> None:
    url = srv.url("d", status=410, times=1000)
    assert [request(url)[0] for _ in range(3)] == [410] * 3
    assert "Retry-After" not in request(url)[1]


def test_etag_change_after(srv: RangeServer) -> None:
    url = srv.url("d", etag_change_after=1)
    _, h0, body0 = request(url)
    assert body0 == DATA
    _, h1, _ = request(url, method="HEAD")
    assert h1["ETag"] != h0["ETag"] and h1["Last-Modified"] != h0["Last-Modified"]
    new = bytes(b ^ 0xFF for b in DATA[:1000])
    status, h2, body = request(url, {"Range": "bytes=0-999", "If-Range": h0["ETag"]})
    assert status == 200 and len(body) == len(DATA) and body[:1000] == new
    status, _, body = request(url, {"Range": "bytes=0-999", "If-Range": h1["ETag"]})
    assert status == 206 and body == new and h2["ETag"] == h1["ETag"]


def test_weak_etag_and_no_validators(srv: RangeServer) -> None:
    _, h, _ = request(srv.url("d", weak_etag=1), method="HEAD")
    assert h["ETag"].startswith('W/"')
    _, h, _ = request(srv.url("d", no_validators=1), method="HEAD")
    assert "ETag" not in h and "Last-Modified" not in h


def test_gzip(srv: RangeServer) -> None:
    url = srv.url("d", gzip=1)
    status, h, body = request(url, {"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert status == 200 and h["Content-Encoding"] == "gzip"
    assert h["Content-Length"] == str(len(body)) and gzip.decompress(body) == DATA
    status, h, body = request(url, {"Accept-Encoding": "identity", "Range": "bytes=0-9"})
    assert status == 206 and body == DATA[:10] and "Content-Encoding" not in h


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip, deflate", True),
        ("br, GZIP;q=0.5", True),
        ("*", True),
        ("*, gzip;q=0", False),
        ("x-gzip", True),
        ("deflate", False),
        ("gzip; q=0.000", False),
    ],
)
def test_accepts_gzip(value: str | None, ok: bool) -> None:
    assert _accepts_gzip(value) is ok


def test_parse_range_helper() -> None:
    assert _parse_range("bytes=0-0", 1) == (0, 0)
    assert _parse_range("bytes=-1", 0) == (-1, -1)
    assert _parse_range("bytes=", 10) is None


def test_redirect_chain(srv: RangeServer) -> None:
    status, h, _ = request(srv.url("d", redirect=2))
    assert status == 302 and h["Location"] == srv.url("d", redirect=1)
    status, h, _ = request(h["Location"])
    assert status == 302 and h["Location"] == "d?redirect=0"
    # Redirect hops do not count as fault GETs: the drop hits the first real one.
    with httpx.Client(follow_redirects=True) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(srv.url("d", redirect=3, drop=2), headers={"Range": "bytes=5-9"})
        resp = client.get(srv.url("d", redirect=1, drop=2), headers={"Range": "bytes=5-9"})
    assert resp.status_code == 206 and resp.content == DATA[5:10]
    assert len(resp.history) == 1
    assert [r.status for r in srv.requests_for("d")][2:] == [302] * 3 + [206, 302, 206]


def test_redirect_to(srv: RangeServer) -> None:
    srv.add_file("other", b"other content")
    status, h, _ = request(srv.url("d", redirect_to="other", key="k"))
    assert status == 302 and h["Location"] == srv.url("other", key="k")
    assert request(h["Location"])[2] == b"other content"


def test_content_disposition(srv: RangeServer) -> None:
    _, h, _ = request(srv.url("d", cd="../../evil.txt"), method="HEAD")
    assert h["Content-Disposition"] == 'attachment; filename="../../evil.txt"'
    _, h, _ = request(srv.url("d", cd_star="résumé €.bin"), method="HEAD")
    assert h["Content-Disposition"] == ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E2%82%AC.bin")


def test_rate(srv: RangeServer) -> None:
    t0 = time.monotonic()
    body = request(srv.url("d", rate=1_000_000), {"Range": "bytes=0-199999"})[2]
    elapsed = time.monotonic() - t0
    assert body == DATA[:200_000] and 0.15 <= elapsed <= 0.3  # ten pieces, a pause after each but the last


def test_rate_does_not_pause_after_the_last_byte(srv: RangeServer) -> None:
    # rate=4: one-byte pieces, 0.25 s apart.  Once the client has the whole
    # body the response is over, so a request that follows it does not overlap it.
    assert request(srv.url("d", rate=4), {"Range": "bytes=0-1"})[2] == DATA[:2]
    time.sleep(0.05)
    assert request(srv.url("d"), {"Range": "bytes=0-0"})[2] == DATA[:1]
    assert srv.max_concurrent == 1


def test_wrong_range(srv: RangeServer) -> None:
    url = srv.url("d", wrong_range=1)
    status, h, body = request(url, {"Range": "bytes=10-19"})
    assert status == 206 and h["Content-Range"] == f"bytes 11-20/{len(DATA)}"
    assert body == DATA[11:21]
    status, h, body = request(url, {"Range": "bytes=-10"})
    assert h["Content-Range"] == f"bytes {len(DATA) - 11}-{len(DATA) - 2}/{len(DATA)}"
    assert body == DATA[-11:-1]


def test_wrong_range_whole_file(srv: RangeServer) -> None:
    status, h, body = request(srv.url("d", wrong_range=1), {"Range": "bytes=0-"})
    assert status == 206 and h["Content-Range"] == f"bytes 1-{len(DATA) - 1}/{len(DATA)}"
    assert body == DATA[1:]


def test_drop_with_chunked_body(srv: RangeServer) -> None:
    assert truncated(srv.url("d", nolength=1, chunked=1, drop=500)) == DATA[:500]


def test_gzip_head_matches_get(srv: RangeServer) -> None:
    url, ae = srv.url("d", gzip=1), {"Accept-Encoding": "gzip"}
    _, hh, _ = request(url, ae, method="HEAD")
    _, h, body = request(url, ae)
    assert hh["Content-Length"] == h["Content-Length"] == str(len(body))
    assert hh["ETag"] == h["ETag"] != request(url, method="HEAD")[1]["ETag"]


def test_fault_counters_are_per_key(srv: RangeServer) -> None:
    assert request(srv.url("d", status=503, key="a"))[0] == 503
    assert request(srv.url("d", status=503, key="b"))[0] == 503
    assert request(srv.url("d", status=503, key="a"))[0] == 200
    srv.reset()
    assert request(srv.url("d", status=503, key="a"))[0] == 503


def test_short(srv: RangeServer) -> None:
    assert truncated(srv.url("d", short=1), {"Range": "bytes=0-99"}) == DATA[:99]
    assert truncated(srv.url("d", short=1)) == DATA[:-1]


def test_slow_headers(srv: RangeServer) -> None:
    url = srv.url("d", slow_headers=0.5)
    with pytest.raises(TimeoutError):
        request(url, timeout=0.1)
    t0 = time.monotonic()
    assert request(url)[2] == DATA and time.monotonic() - t0 < 0.3


# --- capacity and lifecycle ---------------------------------------------------


def test_concurrency_is_tracked(srv: RangeServer) -> None:
    n, results = 32, [b""] * 32
    url = srv.url("d", rate=200_000)

    def one(i: int) -> None:
        results[i] = request(url, {"Range": f"bytes={i * 1000}-{i * 1000 + 39999}"})[2]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == DATA[i * 1000 : i * 1000 + 40000] for i, r in enumerate(results))
    assert srv.max_concurrent == n


def test_big_body_is_fast(srv: RangeServer) -> None:
    big = os.urandom(32 << 20)
    srv.add_file("big", big)
    t0 = time.monotonic()
    with httpx.Client() as client:
        body = client.get(srv.url("big")).content
        part = client.get(srv.url("big"), headers={"Range": "bytes=1000000-"}).content
    assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    assert part == big[1_000_000:]
    assert time.monotonic() - t0 < 2


def test_stop_is_prompt_with_stalled_handler() -> None:
    with RangeServer() as own:
        own.add_file("x", b"x" * 1000)
        worker = threading.Thread(target=truncated, args=(own.url("x", stall=30),))
        worker.start()
        while own.max_concurrent == 0:
            time.sleep(0.01)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1
    worker.join(timeout=1)
    assert not worker.is_alive()
