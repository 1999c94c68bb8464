"""The probe's redirects, followed by hand (``probe.follow``), against servers played by httpx.MockTransport.

Each hop is one request of its own: a relative Location is resolved against
the URL it answered, only http:// and https:// are followed, at most
``MAX_REDIRECTS`` hops, and the user's credentials stop at the first hop
that leaves the origin of the URL given, for good.  The same rules against
real servers on two origins, in both modes and at the command line, are in
tests/test_secrets.py; the other probe tests are in tests/test_fetch.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from test_fetch import DATA, ETAG, SIZE, Chunks, FakeSleep, backoff, ranged

from rangefetch import MalformedResponseError, ProtocolError, RemoteFile, probe
from rangefetch.client import MAX_REDIRECTS
from rangefetch.origin import CROSS_ORIGIN_DROPPED, headers_for

A = "http://a.test/dl/data.bin"
B = "https://b.test:8443/cdn/data.bin?token=TOKEN-b"
CREDENTIALS = {"Authorization": "Bearer t0ken-A", "Cookie": "s=c00kie-A", "Proxy-Authorization": "Basic cHJveHk="}
HEADERS = {**CREDENTIALS, "X-Trace": "trace-1"}

Handler = Callable[[httpx.Request], httpx.Response]


class Web:
    """A MockTransport handler for many origins: ``routes`` maps a URL to its answer; anything else is the file.

    Every request is logged with its method, URL and headers (lower-case names).
    """

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append((request.method, url, {k.lower(): v for k, v in request.headers.items()}))
        if url in self.routes:
            return self.routes[url](request)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(SIZE), "Accept-Ranges": "bytes", "ETag": ETAG})
        return ranged()(request)

    def headers_at(self, url: str) -> list[dict[str, str]]:
        return [headers for _, at, headers in self.requests if at == url]


def to(location: str, code: int = 302, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers={"Location": location, **headers})

    return handle


async def run(
    web: Web, url: str = A, headers: dict[str, str] | None = None, sleep: FakeSleep | None = None
) -> RemoteFile:
    async with httpx.AsyncClient(transport=httpx.MockTransport(web)) as http:
        return await probe(http, url, headers=headers, backoff=backoff(sleep or FakeSleep()))


# --- where the hops go -----------------------------------------------------------------


async def test_relative_and_absolute_locations_are_resolved_against_each_hop() -> None:
    hop1, hop2 = "http://a.test/mirror/data.bin", "http://a.test/files/data.bin?sig=1"
    web = Web({A: to("/mirror/data.bin"), hop1: to("../files/data.bin?sig=1", 301), hop2: to(B, 307)})
    remote = await run(web)
    assert (remote.url, remote.final_url, remote.redirects) == (A, B, (hop1, hop2))
    assert (remote.size, remote.ranges, remote.etag) == (SIZE, True, ETAG)
    # HEAD and GET each walked the whole chain, one request per hop.
    assert [(method, url) for method, url, _ in web.requests] == [
        *(("HEAD", url) for url in (A, hop1, hop2, B)),
        *(("GET", url) for url in (A, hop1, hop2, B)),
    ]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_every_redirect_status_keeps_head_and_get(code: int) -> None:
    web = Web({A: to(B, code)})
    remote = await run(web)
    assert remote.final_url == B
    at_b = [(method, headers.get("range")) for method, url, headers in web.requests if url == B]
    assert at_b == [("HEAD", None), ("GET", "bytes=0-0")]


async def test_a_redirect_without_a_location_is_the_answer() -> None:
    web = Web({A: lambda request: httpx.Response(302 if request.method == "HEAD" else 200, content=DATA)})
    remote = await run(web)
    assert (remote.final_url, remote.redirects, remote.size, remote.ranges) == (A, (), SIZE, False)
    assert len(web.requests) == 2


# --- the credentials ----------------------------------------------------------------------


async def test_credentials_stop_at_the_first_hop_off_the_origin_and_never_come_back() -> None:
    same, back = "http://a.test/mirror/data.bin", "http://a.test/back/data.bin"
    web = Web({A: to("/mirror/data.bin"), same: to(B), B: to(back)})
    remote = await run(web, headers=HEADERS)
    assert (remote.final_url, remote.redirects) == (back, (same, B))
    for url in (A, same):  # the user's origin, before the chain left it
        assert len(web.headers_at(url)) == 2
        for headers in web.headers_at(url):
            assert {k: headers.get(k.lower()) for k in HEADERS} == HEADERS
    for url in (B, back):  # another origin, and the way back it chose
        assert len(web.headers_at(url)) == 2
        for headers in web.headers_at(url):
            assert not CROSS_ORIGIN_DROPPED & headers.keys(), headers
            assert headers["x-trace"] == "trace-1"
    # The range GETs to the final URL, on the user's origin again, go without them too.
    assert headers_for(remote, HEADERS) == {"X-Trace": "trace-1"}


@pytest.mark.parametrize(
    "target",
    ["https://a.test/dl/data.bin", "http://a.test:8080/dl/data.bin", "http://cdn.a.test/dl/data.bin"],
    ids=["scheme", "port", "host"],
)
async def test_another_scheme_port_or_host_is_another_origin(target: str) -> None:
    web = Web({A: to(target)})
    remote = await run(web, headers={"authorization": "Bearer t0ken-A", "COOKIE": "s=1", "X-Trace": "trace-1"})
    assert remote.final_url == target
    for headers in web.headers_at(target):
        assert not {"authorization", "cookie"} & headers.keys() and headers["x-trace"] == "trace-1"


async def test_a_same_origin_chain_keeps_every_header() -> None:
    web = Web({A: to("http://A.TEST:80/other/data.bin")})
    remote = await run(web, headers=HEADERS)
    assert remote.redirects == ()
    final = web.headers_at(remote.final_url)
    assert len(final) == 2 and all({k: h.get(k.lower()) for k in HEADERS} == HEADERS for h in final)
    assert headers_for(remote, HEADERS) == HEADERS


async def test_a_host_header_of_the_user_stays_with_its_origin() -> None:
    web = Web({A: to(B)})
    await run(web, headers={"Host": "a.test", "X-Trace": "trace-1"})
    assert {h["host"] for h in web.headers_at(A)} == {"a.test"}
    assert {h["host"] for h in web.headers_at(B)} == {"b.test:8443"}


# --- limits and refusals ---------------------------------------------------------------------


def chain(hops: int) -> Web:
    """``A`` redirects ``hops`` times (alternately relative and absolute) before the file."""
    urls = [A] + [f"http://a.test/hop{i}/data.bin" for i in range(1, hops + 1)]
    return Web({url: to(f"/hop{i + 1}/data.bin" if i % 2 else urls[i + 1]) for i, url in enumerate(urls[:-1])})


async def test_up_to_max_redirects_are_followed() -> None:
    remote = await run(chain(MAX_REDIRECTS))
    assert remote.final_url == f"http://a.test/hop{MAX_REDIRECTS}/data.bin"
    assert len(remote.redirects) == MAX_REDIRECTS - 1


async def test_one_more_is_a_protocol_error_without_retries() -> None:
    web, sleep = chain(MAX_REDIRECTS + 1), FakeSleep()
    with pytest.raises(ProtocolError, match=f"too many redirects for {A}") as info:
        await run(web, sleep=sleep)
    assert info.value.exit_code == 1 and sleep.delays == []
    # The HEAD's chain: the redirect after the limit is not followed, the GET never sent.
    assert [method for method, _, _ in web.requests] == ["HEAD"] * (MAX_REDIRECTS + 1)


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("file:///etc/passwd", "file:///etc/passwd"),
        (
            "ftp://bob:pw-bob@files.test/data.bin?token=TOKEN-ftp",
            "ftp://bob:REDACTED@files.test/data.bin?token=REDACTED",
        ),
    ],
)
async def test_a_hop_to_another_scheme_is_the_servers_doing(location: str, shown: str) -> None:
    web, sleep = Web({A: to(B), B: to(location)}), FakeSleep()
    with pytest.raises(ProtocolError) as info:
        await run(web, sleep=sleep)
    assert str(info.value) == f"b.test:8443 redirected to {shown}: only http:// and https:// URLs are followed"
    assert info.value.exit_code == 1 and sleep.delays == []
    assert len(web.requests) == 2  # the HEAD's two hops; nothing is sent to the other scheme


async def test_a_location_that_is_no_url_is_a_malformed_reply() -> None:
    web, sleep = Web({A: to("http://[::1/data.bin")}), FakeSleep()
    with pytest.raises(MalformedResponseError, match="a.test sent a reply that breaks HTTP/1.1: Invalid URL"):
        await run(web, sleep=sleep)
    assert len(web.requests) == 1 and sleep.delays == []


# --- the redirects' bodies and logs ------------------------------------------------------------


async def test_a_large_redirect_body_is_not_read() -> None:
    bodies: dict[str, list[Chunks]] = {"big": [], "small": []}
    hop = "http://a.test/hop/data.bin"

    def first(request: httpx.Request) -> httpx.Response:
        # A reply to HEAD has no body (RFC 9110 §9.3.2), whatever its Content-Length says.
        chunks = [] if request.method == "HEAD" else [b"x" * 65536] * 100
        bodies["big"].append(body := Chunks(chunks))
        return httpx.Response(302, headers={"Location": hop, "Content-Length": "6553600"}, stream=body)

    def second(request: httpx.Request) -> httpx.Response:
        bodies["small"].append(body := Chunks([] if request.method == "HEAD" else [b"moved\n"]))
        return httpx.Response(302, headers={"Location": B, "Content-Length": "6"}, stream=body)

    web = Web({A: first, hop: second})
    remote = await run(web)
    assert remote.final_url == B
    # The GET's is closed unread (only its connection is lost); the HEAD's is empty.
    assert [(body.sent, body.closed) for body in bodies["big"]] == [(0, True), (0, True)]
    # Read, so that its connection can carry the next hop.
    assert [(body.sent, body.closed) for body in bodies["small"]] == [(0, True), (6, True)]


async def test_hops_are_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret_hop = "http://alice:pw-alice@a.test/hop?sig=SIG-hop"
    web = Web({A: to(secret_hop), secret_hop: to(B)})
    with caplog.at_level(logging.DEBUG, logger="rangefetch"):
        remote = await run(web, headers=HEADERS)
    assert remote.final_url == B
    assert "b.test:8443" in caplog.text
    for secret in ("pw-alice", "SIG-hop", "TOKEN-b", *CREDENTIALS.values()):
        assert secret not in caplog.text
