"""``rangefetch dashboard`` (producer/dashboard/): snapshot, metrics, actions and their guards, on a real Redis.

The browser test is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_helpers import DashboardProcess, rangefetch
from distributed_helpers import QUEUE, arq_pool, quick_settings, start_download, wait_finished, worker_env
from prometheus_client.parser import text_string_to_metric_families
from rangeserver import RangeServer
from redis.asyncio import Redis
from redisserver import RedisServer, free_port
from starlette.applications import Starlette

from rangefetch import Range
from rangefetch.distributed.keys import sem_host
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store, WorkerInfo
from rangefetch.producer.dashboard.app import create_app
from rangefetch.producer.dashboard.metrics import render
from rangefetch.producer.dashboard.poller import MAX_SAMPLES, Poller
from rangefetch.producer.dashboard.snapshot import Pieces, piece_map, read_snapshot

pytestmark = pytest.mark.redis

SECRET_URL = "https://alice:hunter22@example.com/big.iso?X-Amz-Signature=abcdef123&part=1"
SECRETS = ("hunter22", "abcdef123", "Bearer-xyz789")
BASE = "http://127.0.0.1:8808"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = Redis.from_url(redis_url)
    yield Store(client)
    await client.aclose()


async def seeded(store: Store) -> str:
    """A running download of five ranges: verified, done, in flight (half), failed, queued; a worker and a slot."""
    spec = DownloadSpec(
        id="d1", url=SECRET_URL, final_url=SECRET_URL, size=5000, path="big.iso", chunk_size=1000, ranges=5,
        connections=4, etag='"e"', headers={"Authorization": "Bearer-xyz789"},
    )  # fmt: skip
    assert await store.create(spec)
    await store.set_state("d1", DownloadState.RUNNING)
    r = [Range(i * 1000, i * 1000 + 999) for i in range(5)]
    await store.mark_done("d1", r[0], "00")
    await store.mark_done("d1", r[1], "00")
    await store.set_verified("d1", 1000)
    await store.start_range("d1", r[2], "w1")
    await store.set_progress("d1", r[2], 500)
    await store.fail_range("d1", r[3], f"HTTP 503 from {SECRET_URL}")
    await store.heartbeat(WorkerInfo("w1", "hostA", 4242, 1, time.time(), "10.0.0.5"))
    assert await store.acquire_slots("w1:t", {sem_host("example.com"): 16}, ttl=30)
    return "d1"


def test_piece_map_is_one_letter_per_range() -> None:
    record = {"totalLength": 2500, "pieceLength": 1000, "verifiedLength": 0, "state": "running"}
    pieces = Pieces(
        done=frozenset({"0-999"}), progress={"0-999": 1000, "1000-1999": 250, "2000-2499": 100},
        inflight={"1000-1999": "w9"}, failed=frozenset({"2000-2499"}),
    )  # fmt: skip
    got = piece_map(record, pieces)
    assert got["cells"] == "dif"
    assert got["holders"] == {"1": "w9"}
    assert got["partial"] == {"1": 0.25, "2": 0.2}
    assert got["counts"] == {"queued": 0, "in_flight": 1, "done": 1, "verified": 0, "failed": 1}
    assert piece_map({**record, "state": "complete"}, pieces)["cells"] == "vif"


async def test_snapshot_reads_what_status_reads(store: Store) -> None:
    did = await seeded(store)
    snap = await read_snapshot(store, slot_limit=16)
    (d,) = snap["downloads"]
    assert d["gid"] == did and d["state"] == "running"
    assert d["pieces"]["cells"] == "vdifq"
    assert d["pieces"]["holders"] == {"2": "w1"} and d["pieces"]["partial"] == {"2": 0.5}
    assert (d["completedLength"], d["verifiedLength"], d["rangesFailed"]) == (2500, 1000, 1)
    (w,) = snap["workers"]
    assert (w["host"], w["pid"], w["jobs"], w["interface"]) == ("hostA", 4242, 1, "10.0.0.5")
    assert snap["slots"] == [{"host": "example.com", "inUse": 1, "limit": 16}]
    text = json.dumps(snap)
    for secret in SECRETS:
        assert secret not in text
    assert "REDACTED" in d["url"] and "REDACTED" in d["errorMessage"]


async def test_metrics_parse_and_follow_conventions(store: Store) -> None:
    await seeded(store)
    poller = Poller(lambda: read_snapshot(store, slot_limit=16))
    await poller.poll_once()
    families = {f.name: f for f in text_string_to_metric_families(render(poller).decode())}
    for family in families.values():
        assert family.name.startswith("rangefetch_") and family.documentation, family.name
        assert family.type == "gauge" and not family.name.endswith("_total")

    def value(name: str, **labels: str) -> float:
        (sample,) = [s for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
        return sample.value

    assert value("rangefetch_downloads", state="running") == 1
    assert value("rangefetch_downloads", state="complete") == 0
    assert value("rangefetch_download_completed_bytes", download="d1") == 2500
    assert value("rangefetch_download_size_bytes", download="d1") == 5000
    assert value("rangefetch_download_verifier_lag_bytes", download="d1") == 1500
    for state, n in {"verified": 1, "done": 1, "in_flight": 1, "failed": 1, "queued": 1}.items():
        assert value("rangefetch_download_ranges", download="d1", state=state) == n
    assert value("rangefetch_host_slots_in_use", host="example.com") == 1
    assert value("rangefetch_host_slots_limit", host="example.com") == 16
    assert value("rangefetch_workers") == 1
    assert value("rangefetch_worker_jobs", worker="w1") == 1
    assert value("rangefetch_dashboard_redis_up") == 1


async def test_poller_keeps_a_thinned_history() -> None:
    now = [1000.0]
    record = {"gid": "g", "completedLength": 0}

    async def read() -> dict[str, object]:
        return {"time": now[0], "downloads": [dict(record)], "workers": [], "slots": []}

    poller = Poller(read, clock=lambda: now[0])
    for _ in range(3 * MAX_SAMPLES):
        now[0] += 1.0
        record["completedLength"] = int(record["completedLength"]) + 2000  # type: ignore[call-overload]
        await poller.poll_once()
    history = poller.latest["downloads"][0]["history"]
    assert 2 <= len(history) < MAX_SAMPLES
    assert history[-1][1] == 2000 and history[-1][0] == now[0]  # the newest sample is at full grain
    assert all(0 < v <= 2000 for _, v in history)


@contextlib.asynccontextmanager
async def client_for(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in this process, with its lifespan (the poller) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http


async def test_actions_cancel_and_resume(server: RangeServer, redis_url: str, download_dir: Path) -> None:
    server.add_file("a.bin", b"x" * 300_000)
    url = server.url("a.bin")
    pool = await arq_pool(redis_url)
    spec = await start_download(pool, url, download_dir, name="a.bin", chunk_size=64 * 1024)
    queued = await pool.zcard(QUEUE)
    assert queued == spec.ranges
    app = create_app(quick_settings(redis_url, download_dir))
    async with client_for(app) as http:
        csrf = app.state.csrf
        page = await http.get("/")
        assert csrf in page.text and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        cancel = await http.post(f"/api/downloads/{spec.id}/cancel", headers={"X-CSRF-Token": csrf})
        assert cancel.status_code == 200, cancel.text
        assert await Store(pool).state(spec.id) is DownloadState.CANCELLED
        assert await pool.zcard(QUEUE) == 0
        resume = await http.post(f"/api/downloads/{spec.id}/resume", headers={"X-CSRF-Token": csrf})
        assert resume.status_code == 200, resume.text
        assert f"{spec.ranges} jobs enqueued" in resume.json()["message"]
        assert await Store(pool).state(spec.id) is DownloadState.QUEUED
        assert await pool.zcard(QUEUE) == spec.ranges
        state = (await http.get("/api/state")).json()
        assert [d["state"] for d in state["downloads"]] == ["queued"]
        unknown = await http.post("/api/downloads/nope/cancel", headers={"X-CSRF-Token": csrf})
        assert (unknown.status_code, unknown.text) == (404, "no download nope\n")
    await pool.aclose()


async def test_bad_requests_get_short_4xx(store: Store, redis_url: str, download_dir: Path) -> None:
    did = await seeded(store)
    app = create_app(quick_settings(redis_url, download_dir))
    async with client_for(app) as http:
        csrf = app.state.csrf
        ok = {"X-CSRF-Token": csrf}
        cases = [
            await http.get("/no/such/page"),
            await http.get(f"/api/downloads/{did}/cancel"),  # GET on an action
            await http.post("/metrics"),
            await http.post(f"/api/downloads/{did}/cancel"),  # no CSRF token
            await http.post(f"/api/downloads/{did}/cancel", headers={"X-CSRF-Token": "forged"}),
            await http.post(f"/api/downloads/{did}/cancel", headers={**ok, "Origin": "http://evil.example"}),
            await http.post(f"/api/downloads/{did}/cancel", headers={**ok, "Sec-Fetch-Site": "cross-site"}),
            await http.post("/api/downloads/bad%20id!/cancel", headers=ok),
            await http.get("/", headers={"Host": "evil.example:8808"}),  # DNS rebinding
        ]
        assert [r.status_code for r in cases] == [404, 405, 405, 403, 403, 403, 403, 400, 400]
        for r in cases:
            assert len(r.text) < 200 and "Traceback" not in r.text and "<html" not in r.text.lower(), r.text
        assert await store.state(did) is DownloadState.RUNNING  # nothing got through
        same = await http.post(
            f"/api/downloads/{did}/cancel", headers={**ok, "Origin": BASE, "Sec-Fetch-Site": "same-origin"}
        )
        assert same.status_code == 200, same.text
        again = await http.post(f"/api/downloads/{did}/resume", headers=ok)  # the URL is only stored redacted
        assert again.status_code == 409 and "rangefetch enqueue" in again.text
        for secret in SECRETS:
            assert secret not in (await http.get("/api/state")).text
            assert secret not in (await http.get("/metrics")).text


async def test_token_guards_actions(store: Store, redis_url: str, download_dir: Path) -> None:
    did = await seeded(store)
    app = create_app(quick_settings(redis_url, download_dir), host="0.0.0.0", token="s3cret-token")
    async with client_for(app) as http:
        csrf = app.state.csrf
        assert (await http.get("/", headers={"Host": "dash.example:8808"})).status_code == 200
        url = f"/api/downloads/{did}/cancel"
        for auth in (None, "Bearer wrong", "Basic s3cret-token"):
            headers = {"X-CSRF-Token": csrf, **({"Authorization": auth} if auth else {})}
            r = await http.post(url, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        r = await http.post(url, headers={"Authorization": "Bearer s3cret-token"})  # the token alone is not enough
        assert r.status_code == 403
        assert await store.state(did) is DownloadState.RUNNING
        r = await http.post(url, headers={"Authorization": "Bearer s3cret-token", "X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert await store.state(did) is DownloadState.CANCELLED


def test_cli_refuses_an_open_host_without_token(redis_url: str, download_dir: Path) -> None:
    env = worker_env(redis_url, download_dir)
    result = rangefetch("dashboard", "--host", "0.0.0.0", "--port", "1", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rangefetch: error: --host 0.0.0.0 is reachable from other machines: "
        "give --token (or RANGEFETCH_DASHBOARD_TOKEN)"
    ]
    dead = rangefetch("dashboard", "--redis", "redis://127.0.0.1:1/0", env=env)
    assert dead.returncode != 0 and len(dead.stderr.strip().splitlines()) == 1, dead.stderr


def test_cli_names_the_missing_extra(redis_url: str, download_dir: Path) -> None:
    code = "import sys; sys.modules['starlette'] = None; sys.argv = ['rangefetch', 'dashboard']; "
    code += "from rangefetch.program import main; main()"
    env = worker_env(redis_url, download_dir)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rangefetch: error: the dashboard needs the 'dashboard' extra (starlette is missing): "
        "pip install 'rangefetch[dashboard]'"
    ]


async def test_event_stream_sends_the_snapshot(
    store: Store, redis_url: str, download_dir: Path, tmp_path: Path
) -> None:
    did = await seeded(store)
    dash = DashboardProcess(worker_env(redis_url, download_dir), tmp_path / "dashboard.log")
    try:
        async with httpx.AsyncClient(base_url=dash.url, timeout=10) as http:
            firsts = []
            for _ in range(2):
                async with http.stream("GET", "/events") as events:
                    assert events.headers["content-type"].startswith("text/event-stream")
                    async for line in events.aiter_lines():
                        if line.startswith("data: "):
                            firsts.append(json.loads(line[6:]))
                            break
            assert [s["downloads"][0]["gid"] for s in firsts] == [did, did]
            assert firsts[0]["downloads"][0]["pieces"]["cells"] == "vdifq"
            metrics = (await http.get("/metrics")).text
            assert 'rangefetch_downloads{state="running"} 1.0' in metrics
    finally:
        assert dash.stop() == 0, dash.output()


async def test_a_lost_redis_shows_on_the_page_and_in_the_metrics(store: Store, redis_server: RedisServer) -> None:
    await seeded(store)
    poller = Poller(lambda: read_snapshot(store, slot_limit=16))
    await poller.poll_once()
    redis_server.stop()
    try:
        await poller.poll_once()
    finally:
        redis_server.start()
    assert poller.latest["error"] and poller.latest["downloads"][0]["gid"] == "d1"  # the last good view stays
    families = {f.name: f for f in text_string_to_metric_families(render(poller).decode())}
    assert families["rangefetch_dashboard_redis_up"].samples[0].value == 0
    assert families["rangefetch_dashboard_last_poll_timestamp_seconds"].samples[0].value > 0
    await poller.poll_once()
    assert poller.latest["error"] is None


async def test_worker_metrics_port(
    server: RangeServer, redis_url: str, download_dir: Path, start_worker: Callable[..., Any]
) -> None:
    data = os.urandom(700_000)
    server.add_file("w.bin", data)
    port = free_port()
    proc = start_worker("--metrics-port", str(port))
    pool = await arq_pool(redis_url)
    spec = await start_download(pool, server.url("w.bin"), download_dir, name="w.bin", chunk_size=64 * 1024)
    assert await wait_finished(Store(pool), spec.id, timeout=60) is DownloadState.COMPLETE, proc.output()
    await pool.aclose()
    assert hashlib.sha256((download_dir / "w.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    mine = {name: f for name, f in families.items() if name.startswith("rangefetch_")}
    assert set(mine) == {
        "rangefetch_worker_fetched_bytes", "rangefetch_worker_ranges",
        "rangefetch_worker_open_connections", "rangefetch_worker_redis_roundtrip_seconds",
    }  # fmt: skip
    assert all(f.documentation for f in mine.values())

    def value(name: str, sample: str, **labels: str) -> float:
        (found,) = [s for s in families[name].samples if s.name == sample and s.labels == labels]
        return found.value

    assert value("rangefetch_worker_fetched_bytes", "rangefetch_worker_fetched_bytes_total") == len(data)
    assert value("rangefetch_worker_ranges", "rangefetch_worker_ranges_total", outcome="done") == spec.ranges
    assert value("rangefetch_worker_ranges", "rangefetch_worker_ranges_total", outcome="failed") == 0
    assert value("rangefetch_worker_open_connections", "rangefetch_worker_open_connections") == 0
    assert value("rangefetch_worker_redis_roundtrip_seconds", "rangefetch_worker_redis_roundtrip_seconds_count") >= 1
