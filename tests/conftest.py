"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
import trustme
from arq.connections import ArqRedis
from fakeredis import FakeAsyncRedisConnection
from rangeserver import RangeServer
from redis.asyncio import ConnectionPool

# --- a hermetic environment ------------------------------------------------------

# A suite started in the background by a non-interactive shell inherits SIGINT
# ignored, and so would every CLI subprocess (Python installs no
# KeyboardInterrupt handler then): the Ctrl-C tests need it handled.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Variables that would route the tests' requests through a proxy or change which
# CAs are trusted, in any case (pydantic-settings matches names without regard
# to case).  rangefetch's Settings read them; a test that wants one sets it with
# monkeypatch and builds its Settings afterwards.  CLI subprocesses inherit
# os.environ, so they see the cleaned environment too.
_NETWORK_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")
AMBIENT_NETWORK_VARIABLES = frozenset(
    (*_NETWORK_NAMES, *(f"RANGEFETCH_{name}" for name in (*_NETWORK_NAMES, "PROXY", "CA_CERTIFICATE", "INSECURE")))
)


@pytest.fixture(autouse=True)
def _no_ambient_proxy_or_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without proxy or CA variables from the caller's environment."""
    for name in list(os.environ):
        if name.upper() in AMBIENT_NETWORK_VARIABLES:
            monkeypatch.delenv(name)


# --- end of the hermetic environment ------------------------------------------------


# --- range server fixtures (tests/rangeserver.py) ---------------------------


@pytest.fixture(scope="session")
def range_server() -> Iterator[RangeServer]:
    """One live range server for the whole session, stopped at the end."""
    with RangeServer() as srv:
        yield srv


@pytest.fixture
def server(range_server: RangeServer) -> RangeServer:
    """The session range server, with request log and fault counters cleared."""
    range_server.reset()
    return range_server


@pytest.fixture
def plain_port(server: RangeServer) -> int:
    """The port of the plain-HTTP session server (reset): speaking TLS to it is a protocol error."""
    return server.port


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Both data paths: ``Settings(fast_path=True)`` (the default) and httpx's stock transport."""
    value: bool = request.param
    return value


# --- end of range server fixtures --------------------------------------------


# --- TLS fixtures (trustme: a throwaway CA and certificates issued by it) -----


def server_context(ca: trustme.CA, *hosts: str) -> ssl.SSLContext:
    """A server-side SSLContext holding a certificate from ``ca`` for ``hosts``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The test CA; nothing outside this session trusts it."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file (for ``ca_certificate`` / ``--ca-certificate``)."""
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def tls_range_server(tls_ca: trustme.CA) -> Iterator[RangeServer]:
    """A session range server over HTTPS, with a certificate for 127.0.0.1 and localhost."""
    with RangeServer(tls=server_context(tls_ca, "127.0.0.1", "localhost")) as srv:
        yield srv


@pytest.fixture
def tls_server(tls_range_server: RangeServer) -> RangeServer:
    """The session HTTPS range server, with request log, fault and connection counters cleared."""
    tls_range_server.reset()
    return tls_range_server


@pytest.fixture(scope="session")
def tls_wrong_host_range_server(tls_ca: trustme.CA) -> Iterator[RangeServer]:
    """An HTTPS range server whose certificate (from the same CA) names only example.invalid."""
    with RangeServer(tls=server_context(tls_ca, "example.invalid")) as srv:
        yield srv


@pytest.fixture
def tls_wrong_host_server(tls_wrong_host_range_server: RangeServer) -> RangeServer:
    """The wrong-host HTTPS server, reset: hostname verification fails for 127.0.0.1."""
    tls_wrong_host_range_server.reset()
    return tls_wrong_host_range_server


# --- end of TLS fixtures -------------------------------------------------------


# --- proxy fixtures (tests/proxyserver.py) ---------------------------------------

from proxyserver import TinyProxy  # noqa: E402
from redisserver import free_port  # noqa: E402


@pytest.fixture(scope="session")
def tinyproxy() -> Iterator[TinyProxy]:
    """A real forward proxy (Debian's tinyproxy) on 127.0.0.1 for the session."""
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy; tests/run.sh does it as root)")
    with TinyProxy() as proxy:
        yield proxy


@pytest.fixture
def dead_proxy_url() -> str:
    """A proxy URL on 127.0.0.1 where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


# --- end of proxy fixtures --------------------------------------------------------


# --- redis fixtures (tests/redisserver.py) -----------------------------------

from redisserver import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session Redis, emptied first (and started again if a test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


# --- real worker processes (tests/distributed_helpers.py) ---------------------

from distributed_helpers import WorkerProcess, worker_env  # noqa: E402

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def download_dir(tmp_path: Path) -> Path:
    """An empty download directory shared by the producer and the workers of one test."""
    d = tmp_path / "downloads"
    d.mkdir()
    return d


@pytest.fixture
def start_worker(redis_url: str, download_dir: Path, tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``rangefetch worker`` processes: ``start(*args, **env)``; all are stopped, their logs shown, at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = WorkerProcess(worker_env(redis_url, download_dir, **env), log, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        print(f"---- {proc.log.name} ----\n{proc.output()[-4000:]}")


# --- end of redis fixtures ----------------------------------------------------


# --- fakeredis -------------------------------------------------------------------


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    """An arq client on a fresh in-memory fakeredis server (modules may define their own ``redis``)."""
    pool = ConnectionPool(connection_class=FakeAsyncRedisConnection, server=fakeredis.FakeServer())
    r = ArqRedis(connection_pool=pool)
    yield r
    await r.aclose()
