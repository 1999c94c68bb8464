"""Secrets stay with whom they are meant for (issue 9, items 7-9).

* Credentials given for one origin never reach another: ``Authorization``,
  ``Cookie`` and ``Proxy-Authorization`` stop at the first redirect to
  another scheme, host or port, in the probe's own hops (``probe.follow``)
  and in every request after it (``origin.headers_for``), and do not come
  back when the chain returns to the user's origin; in both modes.  Two
  origins on one test server: ``localhost:PORT`` redirects to
  ``127.0.0.1:PORT`` (``redirect_to``), the ``Host`` header each request
  carried tells them apart; or two servers on two ports (``origin_b``),
  chained with ``redirect_url``.
* The resume record holds no password or token and is mode 0600.
* Redis holds only what workers need, and nothing shows it: ``status``,
  ``status --json``, ``wait``, ``workers``, the producer's and the workers' logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from distributed_helpers import WorkerProcess, wait_finished, worker_env
from rangeserver import RangeServer, RequestRecord
from redis.asyncio import Redis
from test_cli import assert_success, run

from rangefetch import RemoteFile, RetryPolicy, Settings, download
from rangefetch.distributed.keys import download_key
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.origin import headers_for, same_origin
from rangefetch.plan import Range
from rangefetch.producer.enqueue import enqueue
from rangefetch.producer.monitor import format_status, status
from rangefetch.producer.watch import watch

NAME = "secret.bin"
DATA = os.urandom(600_000)
SHA = hashlib.sha256(DATA).hexdigest()
CHUNK = 64 * 1024

AUTH = "Bearer t0ken-for-origin-A"
COOKIE = "session=c00kie-for-origin-A"
PROXY_AUTH = "Basic cHJveHktZm9yLUE="
CREDENTIALS = {"Authorization": AUTH, "Cookie": COOKIE, "Proxy-Authorization": PROXY_AUTH}
HEADERS = {**CREDENTIALS, "X-Trace": "trace-1"}
DROPPED = ("authorization", "cookie", "proxy-authorization")


# --- the rule, as a pure function ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "final", "same"),
    [
        ("http://h/f", "http://h/g?x=1", True),
        ("http://h/f", "http://h:80/f", True),  # the default port is the port
        ("https://h/f", "https://h:443/f", True),
        ("http://H.Example/f", "http://h.example/f", True),  # host names are case-insensitive
        ("http://u:p@h/f", "http://h/f", True),  # the user part is not part of the origin
        ("http://h/f", "https://h/f", False),  # scheme: curl sends no credentials to an upgrade either
        ("https://h/f", "http://h/f", False),
        ("http://h/f", "http://h:8080/f", False),
        ("http://h:8080/f", "http://h:8081/f", False),
        ("http://h/f", "http://cdn.h/f", False),
        ("http://127.0.0.1:9/f", "http://localhost:9/f", False),
        ("http://[::1/f", "http://h/f", False),  # unparseable: shares nothing
    ],
)
def test_same_origin(url: str, final: str, same: bool) -> None:
    assert same_origin(url, final) is same
    assert same_origin(final, url) is same


def remote(url: str, final_url: str) -> RemoteFile:
    return RemoteFile(url=url, final_url=final_url, size=10, ranges=True)


def test_headers_for_another_origin_drop_credentials_in_any_case() -> None:
    headers = {"authorization": AUTH, "COOKIE": COOKIE, "Proxy-Authorization": PROXY_AUTH, "X-Trace": "1"}
    assert headers_for(remote("https://a.example/f", "https://b.example/f"), headers) == {"X-Trace": "1"}
    assert headers == {"authorization": AUTH, "COOKIE": COOKIE, "Proxy-Authorization": PROXY_AUTH, "X-Trace": "1"}


def test_headers_for_the_same_origin_pass_as_given() -> None:
    same = remote("https://a.example/f", "https://a.example:443/mirror/f?sig=1")
    assert headers_for(same, HEADERS) == HEADERS
    assert headers_for(same, None) == {}


# --- both modes against a real server: who got which header --------------------------


def cross_origin_url(server: RangeServer, name: str, **faults: object) -> str:
    """A URL on ``localhost`` that redirects to the same file on ``127.0.0.1``: another origin."""
    return server.url(name, redirect_to=name, **faults).replace("://127.0.0.1:", "://localhost:", 1)


def sent_to(server: RangeServer, host: str) -> list[RequestRecord]:
    """The requests for ``NAME`` that went to origin ``host`` (by their ``Host`` header)."""
    return [r for r in server.requests_for(NAME) if r.headers.get("host") == f"{host}:{server.port}"]


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def assert_credentials_stayed_home(server: RangeServer, *, ranged: bool = True) -> None:
    """Origin A (localhost) got the credentials; origin B (127.0.0.1) never did, but got the rest."""
    home, away = sent_to(server, "localhost"), sent_to(server, "127.0.0.1")
    assert home and all(r.headers.get("authorization") == AUTH and r.headers.get("cookie") == COOKIE for r in home)
    fetches = range_gets(away) if ranged else [r for r in away if r.method == "GET" and "range" not in r.headers]
    assert fetches, [(r.method, r.headers) for r in away]
    for rec in fetches:
        assert not {name for name in DROPPED if name in rec.headers}, rec.headers
        assert rec.headers.get("x-trace") == "trace-1"
    assert all(r.headers.get("proxy-authorization") == PROXY_AUTH for r in home)
    # Nor did the probe's own requests there: HEAD and GET, each after its redirect.
    assert {r.method for r in away} == {"HEAD", "GET"}
    for rec in away:
        assert not {name for name in DROPPED if name in rec.headers}, rec.headers
        assert rec.headers.get("x-trace") == "trace-1"


def embedded_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "connections": 4,
        "chunk_size": CHUNK,
        "retry": RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4),
        **overrides,
    }
    return Settings(**values)


async def test_embedded_cross_origin_redirect_keeps_credentials_home(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    result = await download(
        cross_origin_url(server, NAME), tmp_path / "out.bin", headers=HEADERS, settings=embedded_settings()
    )
    assert result.sha256 == SHA == hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest()
    assert_credentials_stayed_home(server)


async def test_embedded_single_stream_keeps_credentials_home(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    url = cross_origin_url(server, NAME, norange=1)  # fetch_stream, not fetch_range
    result = await download(url, tmp_path / "out.bin", headers=HEADERS, settings=embedded_settings())
    assert result.sha256 == SHA
    assert_credentials_stayed_home(server, ranged=False)


async def test_embedded_same_origin_redirect_keeps_the_credentials(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    url = server.url(NAME, redirect_to=NAME)  # 127.0.0.1 -> 127.0.0.1: one origin
    result = await download(url, tmp_path / "out.bin", headers=HEADERS, settings=embedded_settings())
    assert result.sha256 == SHA
    gets = range_gets(server.requests_for(NAME))
    assert gets and all(r.headers.get("authorization") == AUTH and r.headers.get("cookie") == COOKIE for r in gets)


async def test_probe_redirect_drops_proxy_authorization(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    result = await download(
        cross_origin_url(server, NAME), tmp_path / "out.bin", headers=HEADERS, settings=embedded_settings()
    )
    assert result.sha256 == SHA == hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest()
    away = sent_to(server, "127.0.0.1")
    assert [r.method for r in away if r.headers.get("range") in (None, "bytes=0-0")] == ["HEAD", "GET"]
    assert all("proxy-authorization" not in r.headers for r in away)


# --- two origins on two ports, there and back ---------------------------------------------


@pytest.fixture(scope="module")
def second_range_server() -> Iterator[RangeServer]:
    with RangeServer() as srv:
        yield srv


@pytest.fixture
def origin_b(second_range_server: RangeServer) -> RangeServer:
    """A second range server: ``127.0.0.1`` on another port, so another origin than ``server``."""
    second_range_server.reset()
    second_range_server.add_file(NAME, DATA)
    return second_range_server


def there_and_back(a: RangeServer, b: RangeServer) -> str:
    """The user's URL of a chain A -> A (the same origin) -> B -> A: the file is fetched from the last."""
    back = a.url(NAME, key="back")
    at_b = b.url(NAME, redirect_url=back)
    return a.url(NAME, redirect_url=a.url(NAME, redirect_url=at_b, hop=2))


def assert_left_behind_for_good(a: RangeServer, b: RangeServer) -> None:
    """A's two hops got every header; B and the way back to A none of the credentials, but the rest."""
    on_a = a.requests_for(NAME)
    hops = [r for r in on_a if "redirect_url=" in r.path]
    back = [r for r in on_a if "redirect_url=" not in r.path]
    assert len(hops) == 4, [(r.method, r.path) for r in hops]  # HEAD and GET at each
    for rec in hops:
        assert {name: rec.headers.get(name.lower()) for name in HEADERS} == HEADERS, rec.headers
    at_b = b.requests_for(NAME)
    assert sorted(r.method for r in at_b) == ["GET", "HEAD"], [(r.method, r.path) for r in at_b]
    assert range_gets(back), [(r.method, r.headers) for r in back]  # the ranges came from A, at the end
    for rec in at_b + back:
        assert not {name for name in DROPPED if name in rec.headers}, rec.headers
        assert rec.headers.get("x-trace") == "trace-1"


async def test_embedded_two_origins_there_and_back(server: RangeServer, origin_b: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    out = tmp_path / "out.bin"
    result = await download(there_and_back(server, origin_b), out, headers=HEADERS, settings=embedded_settings())
    assert result.sha256 == SHA == hashlib.sha256(out.read_bytes()).hexdigest()
    assert_left_behind_for_good(server, origin_b)


def header_args() -> list[str]:
    return [arg for name, value in HEADERS.items() for arg in ("-H", f"{name}: {value}")]


def test_get_two_origins_there_and_back(server: RangeServer, origin_b: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    url = there_and_back(server, origin_b)
    proc = run("get", "-o", "out.bin", "--chunk-size", "64K", "-c", "4", *header_args(), url, cwd=tmp_path)
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert_left_behind_for_good(server, origin_b)


def test_get_from_another_origin(server: RangeServer, origin_b: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    url = server.url(NAME, redirect_url=origin_b.url(NAME))
    proc = run("get", "-o", "out.bin", "--chunk-size", "64K", "-c", "4", *header_args(), url, cwd=tmp_path)
    assert_success(proc, tmp_path / "out.bin", SHA)
    home, away = server.requests_for(NAME), origin_b.requests_for(NAME)
    assert sorted(r.method for r in home) == ["GET", "HEAD"]
    assert all({name: r.headers.get(name.lower()) for name in HEADERS} == HEADERS for r in home)
    assert range_gets(away)
    for rec in away:
        assert not {name for name in DROPPED if name in rec.headers}, rec.headers
        assert rec.headers.get("x-trace") == "trace-1"


async def test_range_gets_redirected_later_keep_credentials_home(server: RangeServer, tmp_path: Path) -> None:
    # The probe is answered at localhost; every range GET after it is sent
    # on to 127.0.0.1, another origin, where no credential may follow.
    server.add_file(NAME, DATA)
    moved = server.url(NAME, key="moved")
    url = server.url(NAME, moved_url=moved, skip=1, times=1000).replace("://127.0.0.1:", "://localhost:", 1)
    out = tmp_path / "out.bin"
    result = await download(url, out, headers=HEADERS, settings=embedded_settings())
    assert result.sha256 == SHA == hashlib.sha256(out.read_bytes()).hexdigest()
    home, away = sent_to(server, "localhost"), sent_to(server, "127.0.0.1")
    assert len(range_gets(home)) == len(range_gets(away)) > 1  # each range GET was redirected once
    assert all({name: r.headers.get(name.lower()) for name in HEADERS} == HEADERS for r in home)
    for rec in away:
        assert not {name for name in DROPPED if name in rec.headers}, rec.headers
        assert rec.headers.get("x-trace") == "trace-1"


# --- the resume record ---------------------------------------------------------------


async def interrupted(url: str, directory: Path, settings: Settings) -> Path:
    """Start a download of ``url``, cancel it once a range is on record; the record's path."""
    record = directory / f"{NAME}.part.json"
    task = asyncio.create_task(download(url, directory=directory, settings=settings))
    for _ in range(1000):
        try:
            if json.loads(record.read_text())["done"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert record.exists() and (directory / f"{NAME}.part").exists()
    return record


async def test_resume_record_keeps_no_secret(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    plain = server.url(NAME, rate=512 * 1024, token="t0k3n-in-query")
    url = plain.replace("http://", "http://alice:hunter2-pw@", 1)
    s = embedded_settings(connections=2, chunk_size=128 * 1024, checkpoint_interval=0.05)
    old = os.umask(0)  # whatever the umask lets through, the record is the owner's only
    try:
        record = await interrupted(url, tmp_path, s)
    finally:
        os.umask(old)
    text = record.read_text()
    assert "hunter2-pw" not in text and "t0k3n-in-query" not in text
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert "alice:REDACTED@" in json.loads(text)["url"]

    result = await download(url, directory=tmp_path, settings=s)  # the same URL resumes
    assert result.sha256 == SHA and 0 < result.resumed < len(DATA)


async def test_resume_record_is_for_its_url_only(server: RangeServer, tmp_path: Path) -> None:
    server.add_file(NAME, DATA)
    s = embedded_settings(connections=2, chunk_size=128 * 1024, checkpoint_interval=0.05)
    await interrupted(server.url(NAME, rate=512 * 1024, token="first"), tmp_path, s)
    # A fresh token (a presigned URL signed again): the same file, it resumes.
    result = await download(server.url(NAME, rate=512 * 1024, token="second"), directory=tmp_path, settings=s)
    assert result.sha256 == SHA and result.resumed > 0
    (tmp_path / NAME).unlink()
    # Same file, same size and ETag, but another URL: the record is not its own.
    await interrupted(server.url(NAME, rate=512 * 1024, v="1"), tmp_path, s)
    result = await download(server.url(NAME, rate=512 * 1024, v="2"), directory=tmp_path, settings=s)
    assert result.sha256 == SHA and result.resumed == 0


# --- distributed mode: real workers, a real Redis ---------------------------------------


class Redirector:
    """An origin of its own (its own port) that redirects every request to ``location``.

    It records the headers of every request it got.
    """

    def __init__(self, location: str) -> None:
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _redirect(self) -> None:
                owner.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _redirect

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Redirector:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def worker(redis_url: str, download_dir: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """One ``rangefetch worker -v`` process (debug logs: the most it ever says)."""
    proc = WorkerProcess(worker_env(redis_url, download_dir), tmp_path / "worker.log", "-v")
    yield proc
    proc.stop()
    print(f"---- worker.log ----\n{proc.output()[-4000:]}")


async def redis_dump(redis: Redis) -> bytes:
    """Every key and value in Redis, as one blob to search for secrets."""
    client: Any = redis  # redis-py's types say "awaitable or not"
    parts: list[bytes] = []
    async for key in client.scan_iter():
        kind = (await client.type(key)).decode()
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "set":
            value = await client.smembers(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        else:
            value = b""
        parts.append(key + b"=" + repr(value).encode())
    return b"\n".join(parts)


def distributed_settings(redis_url: str, download_dir: Path) -> Settings:
    return Settings(
        redis_url=redis_url, download_dir=download_dir, chunk_size=CHUNK, connections=4,
        retry=RetryPolicy(backoff=0.05, backoff_max=0.5),
    )  # fmt: skip


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.redis
async def test_distributed_cross_origin_redirect_keeps_credentials_home(
    server: RangeServer, redis_url: str, redis_client: Redis, download_dir: Path, worker: WorkerProcess
) -> None:
    server.add_file(NAME, DATA)
    settings = distributed_settings(redis_url, download_dir)
    queued = await enqueue(cross_origin_url(server, NAME), settings=settings, redis=redis_client, headers=HEADERS)
    # What the workers would not send is not stored either.
    dump = await redis_dump(redis_client)
    for secret in (AUTH, COOKIE, PROXY_AUTH):
        assert secret.encode() not in dump
    stored = await cast(Any, redis_client).hgetall(download_key(queued.id, "headers"))
    assert stored == {b"X-Trace": b"trace-1"}

    state = await wait_finished(Store(redis_client), queued.id, timeout=60)
    assert state is DownloadState.COMPLETE, worker.output()[-3000:]
    assert hashlib.sha256((download_dir / NAME).read_bytes()).hexdigest() == SHA
    assert_credentials_stayed_home(server)


@pytest.mark.redis
async def test_distributed_secrets_stay_in_redis(
    server: RangeServer, redis_url: str, redis_client: Redis, download_dir: Path, worker: WorkerProcess
) -> None:
    server.add_file(NAME, DATA)
    # The user's URL (origin A) has its own password and signature; it redirects
    # to a presigned URL (origin B) with credentials of its own.
    target = server.url(NAME, token="TOKEN-cdn-7").replace("http://", "http://bob:hunter2-bob@", 1)
    env = worker_env(redis_url, download_dir)
    with Redirector(target) as origin:
        url = f"http://alice:pw-alice-9@127.0.0.1:{origin.port}/{NAME}?sig=SIG-user-1"
        headers = [arg for name, value in CREDENTIALS.items() for arg in ("-H", f"{name}: {value}")]
        enqueued = cli("enqueue", url, "-o", NAME, "--chunk-size", "64K", "-c", "4", *headers, "-vv", env=env)
        assert enqueued.returncode == 0, enqueued.stderr
        assert origin.requests and all(r.get("cookie") == COOKIE for r in origin.requests)
    did = enqueued.stdout.strip()
    state = await wait_finished(Store(redis_client), did, timeout=60)
    assert state is DownloadState.COMPLETE, worker.output()[-3000:]
    assert hashlib.sha256((download_dir / NAME).read_bytes()).hexdigest() == SHA
    for rec in range_gets(server.requests_for(NAME)):
        assert rec.headers.get("authorization") != AUTH and "cookie" not in rec.headers

    # Redis: what the workers fetch (the redirect target, with its credentials), nothing of origin A's.
    dump = await redis_dump(redis_client)
    assert b"hunter2-bob" in dump and b"TOKEN-cdn-7" in dump  # README, "Secrets in distributed mode"
    for secret in ("pw-alice-9", "SIG-user-1", AUTH, COOKIE, PROXY_AUTH):
        assert secret.encode() not in dump

    outputs = [
        enqueued,
        cli("status", did, "--json", env=env),
        cli("status", did, env=env),
        cli("status", "--json", env=env),
        cli("wait", did, "-vv", env=env),
        cli("workers", "--json", env=env),
        cli("workers", env=env),
    ]
    assert all(out.returncode == 0 for out in outputs), [out.stderr for out in outputs]
    assert json.loads(outputs[1].stdout)["url"].startswith("http://alice:REDACTED@127.0.0.1:")
    shown = "\n".join(out.stdout + out.stderr for out in outputs) + worker.output()
    for secret in ("pw-alice-9", "SIG-user-1", "hunter2-bob", "TOKEN-cdn-7", AUTH, COOKIE, PROXY_AUTH):
        assert secret not in shown


@pytest.mark.redis
async def test_distributed_two_origins_there_and_back(
    server: RangeServer,
    origin_b: RangeServer,
    redis_url: str,
    redis_client: Redis,
    download_dir: Path,
    worker: WorkerProcess,
) -> None:
    server.add_file(NAME, DATA)
    env = worker_env(redis_url, download_dir)
    url = there_and_back(server, origin_b)
    enqueued = cli("enqueue", url, "-o", NAME, "--chunk-size", "64K", "-c", "4", *header_args(), env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    did = enqueued.stdout.strip()
    # The final URL is on the user's origin again, but the workers get no credentials for it.
    stored = await cast(Any, redis_client).hgetall(download_key(did, "headers"))
    assert stored == {b"X-Trace": b"trace-1"}
    dump = await redis_dump(redis_client)
    for secret in (AUTH, COOKIE, PROXY_AUTH):
        assert secret.encode() not in dump
    state = await wait_finished(Store(redis_client), did, timeout=60)
    assert state is DownloadState.COMPLETE, worker.output()[-3000:]
    assert hashlib.sha256((download_dir / NAME).read_bytes()).hexdigest() == SHA
    assert_left_behind_for_good(server, origin_b)


# --- status of a failure that quotes the redirect target --------------------------------


async def test_status_hides_a_redirect_target_with_credentials() -> None:
    redis = fakeredis.FakeAsyncRedis()
    store = Store(redis)
    final = "https://bob:hunter2-bob@cdn.example/f?X-Amz-Signature=s1gnature&token=TOKEN-cdn-7&part=2"
    spec = DownloadSpec(
        id="d1", url="https://alice:REDACTED@origin.example/f", final_url=final, size=10, path="f",
        chunk_size=5, ranges=2, connections=1, etag='"e"', headers={"Authorization": AUTH},
    )  # fmt: skip
    try:
        assert await store.create(spec)
        await store.fail_range("d1", Range(0, 4), f"connection to {final} broke")
        await store.set_state("d1", DownloadState.FAILED, error=f"too many redirects for {final}")
        record = await status(store, "d1")
        stream = io.StringIO()
        await watch(store, ["d1"], stream=stream, as_json=True)
        await watch(store, [], stream=stream)
        shown = json.dumps(record) + format_status(record) + stream.getvalue()
        for secret in ("hunter2-bob", "s1gnature", "TOKEN-cdn-7", AUTH):
            assert secret not in shown
        assert "cdn.example/f" in record["errorMessage"]
    finally:
        await redis.aclose()
