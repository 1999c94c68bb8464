"""End-to-end tests of embedded mode through the library API (``download`` / ``download_sync``).

Every test runs against the real range server (tests/rangeserver.py) and
compares the sha256 of the result with the source bytes.  Retries are made
fast through ``Settings``; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from byteranges import merged, overlap, total, within
from rangeserver import RangeServer, RequestRecord

from rangefetch import (
    Checksum,
    DownloadResult,
    HTTPStatusError,
    ProtocolError,
    RemoteChangedError,
    RetriesExhaustedError,
    RetryPolicy,
    Settings,
    Timeouts,
    UnreachableError,
    UnsafePathError,
    UsageError,
    VerificationError,
    download,
    download_sync,
)

CHUNK = 256 * 1024
DATA = os.urandom(1_000_000)  # not a multiple of CHUNK: the last range is short
SHA = hashlib.sha256(DATA).hexdigest()
# What the server serves once ``etag_change_after`` kicks in: same size, every byte flipped.
CHANGED = DATA.translate(bytes(255 - i for i in range(256)))
NAME = "data.bin"
FAST_RETRY = RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4)


def settings(**overrides: Any) -> Settings:
    """Small ranges, four connections and near-instant retries."""
    values: dict[str, Any] = {"connections": 4, "chunk_size": CHUNK, "retry": FAST_RETRY, **overrides}
    return Settings(**values)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_range(value: str) -> tuple[int, int]:
    first, _, last = value.removeprefix("bytes=").partition("-")
    return int(first), int(last)


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched file ranges (not the ``bytes=0-0`` probe)."""
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def planned(size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size) - 1) for start in range(0, size, chunk)]


def assert_ok(result: DownloadResult, data: bytes = DATA) -> None:
    """The result holds exactly ``data``, and nothing of the transfer is left beside it."""
    digest = hashlib.sha256(data).hexdigest()
    assert result.path.read_bytes() == data
    assert sha256(result.path) == digest == result.sha256
    assert result.size == len(data)
    assert not result.path.with_name(result.path.name + ".part").exists()
    assert not result.path.with_name(result.path.name + ".part.json").exists()


async def wait_for_done_ranges(record: Path, tries: int = 1000) -> list[str]:
    """Poll until the resume record lists at least one finished range."""
    for _ in range(tries):
        try:
            done: list[str] = json.loads(record.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = []
        if done:
            return done
        await asyncio.sleep(0.02)
    raise AssertionError(f"{record} never listed a finished range")


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


# --- the normal case ----------------------------------------------------------


async def test_ranged_download(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings())

    assert result.path == (tmp_path / NAME).resolve()
    assert_ok(result)
    assert result.resumed == 0
    assert srv.max_concurrent <= 4
    requests = srv.requests
    assert all(r.headers.get("accept-encoding") == "identity" for r in requests)
    gets = range_gets(requests)
    assert sorted(parse_range(r.headers["range"]) for r in gets) == planned(len(DATA))
    etag = result.remote.etag
    assert etag is not None and not etag.startswith("W/")
    assert all(r.headers.get("if-range") == etag for r in gets)
    assert all(r.status == 206 for r in gets)


async def test_explicit_output_path(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME), "sub/out.bin", directory=tmp_path, settings=settings())
    assert result.path == (tmp_path / "sub" / "out.bin").resolve()
    assert_ok(result)


def test_download_sync(srv: RangeServer, tmp_path: Path) -> None:
    result = download_sync(srv.url(NAME), tmp_path / "sync.bin", settings=settings())
    assert_ok(result)


@pytest.mark.parametrize("size", [0, 1, 17, CHUNK, CHUNK + 1])
@pytest.mark.parametrize("faults", [{}, {"norange": 1}, {"nolength": 1}], ids=["ranged", "norange", "nolength"])
async def test_small_and_edge_sizes(server: RangeServer, tmp_path: Path, size: int, faults: dict[str, Any]) -> None:
    data = os.urandom(size)
    server.add_file(f"size{size}", data)
    result = await download(server.url(f"size{size}", **faults), directory=tmp_path, settings=settings())
    assert_ok(result, data)


# --- servers that cannot or will not do ranges --------------------------------


@pytest.mark.parametrize(
    "faults",
    [{"norange": 1}, {"acceptranges_none": 1}, {"nolength": 1}, {"nolength": 1, "chunked": 1}],
    ids=["norange", "acceptranges_none", "nolength", "nolength_chunked"],
)
async def test_single_stream_fallback(srv: RangeServer, tmp_path: Path, faults: dict[str, Any]) -> None:
    result = await download(srv.url(NAME, **faults), directory=tmp_path, settings=settings())
    assert_ok(result)
    assert not result.remote.ranges
    # One plain GET carries the file; no range requests after the probe.
    assert range_gets(srv.requests) == []
    assert [r for r in srv.requests if r.method == "GET" and "range" not in r.headers] != []


@pytest.mark.parametrize(
    "faults",
    [{"nohead": 405}, {"nohead": 403}, {"nohead": 501}, {"headlies": 1}, {"weak_etag": 1}, {"no_validators": 1}],
    ids=["nohead405", "nohead403", "nohead501", "headlies", "weak_etag", "no_validators"],
)
async def test_odd_metadata_still_ranged(srv: RangeServer, tmp_path: Path, faults: dict[str, Any]) -> None:
    result = await download(srv.url(NAME, **faults), directory=tmp_path, settings=settings())
    assert_ok(result)
    assert result.remote.ranges
    gets = range_gets(srv.requests)
    assert sorted(parse_range(r.headers["range"]) for r in gets) == planned(len(DATA))
    if "nohead" in faults:
        assert {r.status for r in srv.requests if r.method == "HEAD"} == {faults["nohead"]}
    if "weak_etag" in faults:
        # A weak tag may not go in If-Range (RFC 9110 §13.1.5): the date is used instead.
        assert {r.headers.get("if-range") for r in gets} == {result.remote.last_modified}
    if "no_validators" in faults:
        assert all("if-range" not in r.headers for r in gets)


async def test_gzip_server_gets_identity(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME, gzip=1), directory=tmp_path, settings=settings())
    assert_ok(result)  # the identity bytes, not a gzip stream
    assert all(r.headers.get("accept-encoding") == "identity" for r in srv.requests)


async def test_rate_limited_connections(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME, rate=4_000_000), directory=tmp_path, settings=settings())
    assert_ok(result)
    assert srv.max_concurrent <= 4


# --- transient faults: retried, resumed, and finally correct ------------------


async def test_drop_resumes_from_last_byte(srv: RangeServer, tmp_path: Path) -> None:
    # The probe is GET #0; with two connections the first two range GETs are
    # the next two, and both are cut after 100000 bytes.
    s = settings(connections=2)
    result = await download(srv.url(NAME, drop=100_000, times=3), directory=tmp_path, settings=s)
    assert_ok(result)
    starts = [parse_range(r.headers["range"])[0] for r in range_gets(srv.requests)]
    resumed = [s for s in starts if s % CHUNK]
    assert len(resumed) == 2
    assert all(0 < s % CHUNK <= 100_000 for s in resumed)


@pytest.mark.parametrize(
    "faults",
    [{"stall": 5, "stall_after": 50_000, "times": 2}, {"slow_headers": 5, "times": 1}],
    ids=["stall_mid_body", "slow_headers"],
)
async def test_stall_is_retried(srv: RangeServer, tmp_path: Path, faults: dict[str, Any]) -> None:
    s = settings(timeouts=Timeouts(stall=1))
    result = await download(srv.url(NAME, **faults), directory=tmp_path, settings=s)
    assert_ok(result)
    if "stall_after" in faults:
        starts = [parse_range(r.headers["range"])[0] for r in range_gets(srv.requests)]
        assert 50_000 in [s % CHUNK for s in starts]  # resumed where the stalled body stopped


@pytest.mark.parametrize(
    "faults",
    [
        {"status": 503, "retry_after": 1, "times": 1},
        {"status": 429, "retry_after": 1, "times": 1},
        {"status": 503, "retry_after_date": 1, "times": 1},
    ],
    ids=["503", "429", "503_date"],
)
async def test_server_busy_is_retried(srv: RangeServer, tmp_path: Path, faults: dict[str, Any]) -> None:
    # Status faults hit the first GETs, which are the probe's: the probe waits out Retry-After.
    result = await download(srv.url(NAME, **faults), directory=tmp_path, settings=settings())
    assert_ok(result)
    statuses = [r.status for r in srv.requests if r.method == "GET"]
    assert statuses.count(faults["status"]) == faults["times"]
    # The probe's retry repeats only its GET: HEAD told all it could the first time.
    assert [r.method for r in srv.requests].count("HEAD") == 1


async def test_server_busy_forever_gives_up(srv: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(RetriesExhaustedError):
        await download(srv.url(NAME, status=500, times=100), directory=tmp_path, settings=settings())
    assert list(tmp_path.iterdir()) == []
    assert len([r for r in srv.requests if r.method == "GET"]) == FAST_RETRY.max_tries


async def test_connection_refused_gives_up(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens: the probe gives up after UNREACHABLE_TRIES, not the whole retry budget.
    # The fast path says why in the system's words; anyio's "All connection attempts failed" keeps no errno.
    for fast_path, why in ((True, ": Connection refused$"), (False, "")):
        with pytest.raises(UnreachableError, match=f"could not connect to 127.0.0.1:{port}{why}"):
            await download(f"http://127.0.0.1:{port}/f/x", directory=tmp_path, settings=settings(fast_path=fast_path))
    assert list(tmp_path.iterdir()) == []


# --- permanent failures: one clean error, nothing at the final path -----------


@pytest.mark.parametrize("status", [404, 410, 403])
async def test_permanent_status(srv: RangeServer, tmp_path: Path, status: int) -> None:
    with pytest.raises(HTTPStatusError) as info:
        await download(srv.url(NAME, status=status), directory=tmp_path, settings=settings())
    assert info.value.status == status
    assert len([r for r in srv.requests if r.method == "GET"]) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


async def test_wrong_content_range_fails(srv: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(ProtocolError):
        await download(srv.url(NAME, wrong_range=1), directory=tmp_path, settings=settings())
    assert not (tmp_path / NAME).exists()


async def test_short_body_exhausts_retries(srv: RangeServer, tmp_path: Path) -> None:
    # Current behaviour: a body one byte short is a dropped connection, so the
    # range resumes at its last byte, gets nothing, and the retries run out.
    with pytest.raises(RetriesExhaustedError):
        await download(srv.url(NAME, short=1), directory=tmp_path, settings=settings())
    assert not (tmp_path / NAME).exists()


async def test_remote_changes_during_download(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, etag_change_after=2)
    with pytest.raises(RemoteChangedError):
        await download(url, directory=tmp_path, settings=settings())
    assert not (tmp_path / NAME).exists()

    # A fresh key serves the first version again; whatever was kept is valid for it.
    result = await download(srv.url(NAME, key="fresh"), directory=tmp_path, settings=settings())
    assert_ok(result)


async def test_rerun_after_remote_changed_starts_over(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, etag_change_after=2)
    with pytest.raises(RemoteChangedError):
        await download(url, directory=tmp_path, settings=settings())
    # The same URL now serves only the new version: nothing old may be reused.
    result = await download(url, directory=tmp_path, settings=settings())
    assert_ok(result, CHANGED)
    assert result.resumed == 0


# --- redirects and names from the server ---------------------------------------


async def test_redirect_chain(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME, redirect=3), directory=tmp_path, settings=settings())
    assert_ok(result)
    assert result.path.name == NAME
    # Ranges go straight to where the redirects ended.
    assert all(r.status == 206 for r in range_gets(srv.requests))


async def test_redirect_to_other_name(srv: RangeServer, tmp_path: Path) -> None:
    other = os.urandom(600_000)
    srv.add_file("other.bin", other)
    result = await download(srv.url(NAME, redirect_to="other.bin"), directory=tmp_path, settings=settings())
    assert result.path == (tmp_path / "other.bin").resolve()
    assert_ok(result, other)


@pytest.mark.parametrize(
    "faults",
    [{"cd": "../../evil.txt"}, {"cd_star": "../../evil.txt"}, {"cd": "..\\..\\evil.txt"}, {"cd": "/etc/evil.txt"}],
    ids=["cd", "cd_star", "cd_backslash", "cd_absolute"],
)
async def test_disposition_cannot_escape(srv: RangeServer, tmp_path: Path, faults: dict[str, Any]) -> None:
    target = tmp_path / "dl"
    result = await download(srv.url(NAME, **faults), directory=target, settings=settings())
    assert result.path == (target / "evil.txt").resolve()
    assert_ok(result)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["dl", "dl/evil.txt"]


async def test_names_from_the_server_lose_bidi_and_c1_controls(srv: RangeServer, tmp_path: Path) -> None:
    # U+202E would show "invoice\u202etxt.exe" as "invoiceexe.txt"; U+009B starts a terminal sequence.
    url = srv.url(NAME, cd_star="invoice\u202etxt\u2066.exe\u009b\u0085")
    result = await download(url, directory=tmp_path, settings=settings())
    assert result.path == (tmp_path / "invoicetxt.exe").resolve()
    assert_ok(result)


@pytest.mark.parametrize("output", ["newdir/", "newdir/."])
async def test_output_naming_a_directory_is_refused_before_any_request(
    srv: RangeServer, tmp_path: Path, output: str
) -> None:
    with pytest.raises(UnsafePathError, match="names a directory"):
        await download(srv.url(NAME), output, directory=tmp_path, settings=settings())
    assert srv.requests == []
    assert list(tmp_path.iterdir()) == []


async def test_chunk_size_below_the_floor_is_refused_before_any_request(srv: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="chunk size 1K is too small: use at least 64K"):
        await download(srv.url(NAME), directory=tmp_path, settings=settings(chunk_size="1k"))
    assert srv.requests == []
    assert list(tmp_path.iterdir()) == []


async def test_chunk_size_at_the_floor_is_taken(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings(chunk_size="64K"))
    assert_ok(result)
    assert sorted(parse_range(r.headers["range"]) for r in range_gets(srv.requests)) == planned(len(DATA), 65536)


async def test_confined_output_outside_directory(srv: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        await download(srv.url(NAME), "../escape.bin", directory=tmp_path / "dl", settings=settings(), confine=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "not a url"])
async def test_unsupported_url(srv: RangeServer, tmp_path: Path, url: str) -> None:
    with pytest.raises(UsageError):
        await download(url, directory=tmp_path, settings=settings())
    assert srv.requests == []
    assert list(tmp_path.iterdir()) == []


# --- checksums ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
async def test_checksum_matches(srv: RangeServer, tmp_path: Path, algorithm: str) -> None:
    expected = Checksum(algorithm, hashlib.new(algorithm, DATA).hexdigest())
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings(), checksum=expected)
    assert_ok(result)


WRONG = Checksum("sha256", hashlib.sha256(b"something else").hexdigest())


@pytest.mark.parametrize("faults", [{}, {"norange": 1}], ids=["ranged", "stream"])
async def test_checksum_mismatch_keeps_the_file_and_a_rerun_only_verifies(
    srv: RangeServer, tmp_path: Path, faults: dict[str, Any]
) -> None:
    url = srv.url(NAME, **faults)
    with pytest.raises(VerificationError) as info:
        await download(url, directory=tmp_path, settings=settings(), checksum=WRONG)
    part, record = tmp_path / f"{NAME}.part", tmp_path / f"{NAME}.part.json"
    message = str(info.value)
    assert "sha256 mismatch" in message and SHA in message  # what was expected, and what came
    assert f"kept the downloaded {part.resolve()}" in message and "run again with the right --checksum" in message
    assert not (tmp_path / NAME).exists()
    assert sha256(part) == SHA
    saved = json.loads(record.read_text())  # marked complete: every byte done
    assert merged(parse_range(text) for text in saved["done"]) == [(0, len(DATA) - 1)]

    first = len(srv.requests)
    result = await download(url, directory=tmp_path, settings=settings(), checksum=Checksum("sha256", SHA))
    assert_ok(result)
    assert result.resumed == len(DATA)
    again = srv.requests[first:]
    # The probe only: no range GET, no plain GET of the file.
    assert range_gets(again) == []
    assert [r.headers.get("range") for r in again if r.method == "GET"] == ["bytes=0-0"]


async def test_a_kept_file_with_another_wrong_checksum_is_kept_again(srv: RangeServer, tmp_path: Path) -> None:
    for _ in range(2):
        with pytest.raises(VerificationError, match="kept the downloaded"):
            await download(srv.url(NAME), directory=tmp_path, settings=settings(), checksum=WRONG)
    assert len(range_gets(srv.requests)) == len(planned(len(DATA)))  # fetched once
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings())  # no checksum: size and sha256
    assert_ok(result)
    assert len(range_gets(srv.requests)) == len(planned(len(DATA)))


async def test_checksum_mismatch_without_validators_removes_part(srv: RangeServer, tmp_path: Path) -> None:
    # Nothing would tell a rerun that the remote file is still the same: keeping it would not help.
    with pytest.raises(VerificationError) as info:
        await download(srv.url(NAME, no_validators=1), directory=tmp_path, settings=settings(), checksum=WRONG)
    assert "kept" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_a_kept_file_is_not_reused_once_the_remote_changed(srv: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        await download(srv.url(NAME), directory=tmp_path, settings=settings(), checksum=WRONG)
    new = os.urandom(len(DATA))
    srv.add_file(NAME, new)  # same size, new ETag
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings())
    assert_ok(result, new)
    assert result.resumed == 0


# --- resuming -------------------------------------------------------------------


async def interrupted(url: str, tmp_path: Path, s: Settings) -> list[str]:
    """Start a download, cancel it once a range is on record; return the ranges done."""
    task = asyncio.create_task(download(url, directory=tmp_path, settings=s))
    done = await wait_for_done_ranges(tmp_path / f"{NAME}.part.json")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / NAME).exists()
    assert (tmp_path / f"{NAME}.part").exists()
    recorded: list[str] = json.loads((tmp_path / f"{NAME}.part.json").read_text())["done"]
    assert within(map(parse_range, done), map(parse_range, recorded))
    return recorded


def resume_settings() -> Settings:
    return settings(connections=2, chunk_size=128 * 1024, checkpoint_interval=0.05)


async def test_resume_after_cancel(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, rate=512 * 1024)
    done = await interrupted(url, tmp_path, resume_settings())
    first = len(srv.requests)

    result = await download(url, directory=tmp_path, settings=resume_settings())
    assert_ok(result)
    kept = [parse_range(text) for text in done]
    assert result.resumed == total(kept)
    fetched = [parse_range(r.headers["range"]) for r in range_gets(srv.requests[first:])]
    assert not overlap(fetched, kept)
    assert sum(end - start + 1 for start, end in fetched) == len(DATA) - result.resumed


@pytest.mark.parametrize("size", [len(DATA), len(DATA) + 1], ids=["same_size", "new_size"])
async def test_resume_after_remote_replaced(srv: RangeServer, tmp_path: Path, size: int) -> None:
    url = srv.url(NAME, rate=512 * 1024)
    await interrupted(url, tmp_path, resume_settings())
    new = os.urandom(size)
    srv.add_file(NAME, new)

    result = await download(srv.url(NAME), directory=tmp_path, settings=resume_settings())
    assert_ok(result, new)
    assert result.resumed == 0


async def test_no_validators_never_resume(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, rate=512 * 1024, no_validators=1)
    await interrupted(url, tmp_path, resume_settings())
    result = await download(srv.url(NAME, no_validators=1), directory=tmp_path, settings=resume_settings())
    assert_ok(result)
    assert result.resumed == 0


async def test_failed_stream_attempt_drops_stale_record(srv: RangeServer, tmp_path: Path) -> None:
    # Regression: a single-stream attempt emptied the .part file but left the
    # ranged run's record, and the next ranged run "resumed" ranges of zeros.
    await interrupted(srv.url(NAME, rate=512 * 1024), tmp_path, resume_settings())
    with pytest.raises(RetriesExhaustedError):
        await download(srv.url(NAME, norange=1, drop=50_000, times=100), directory=tmp_path, settings=settings())
    assert not (tmp_path / f"{NAME}.part.json").exists()

    result = await download(srv.url(NAME), directory=tmp_path, settings=resume_settings())
    assert_ok(result)
    assert result.resumed == 0


async def test_truncated_part_is_not_resumed(srv: RangeServer, tmp_path: Path) -> None:
    await interrupted(srv.url(NAME, rate=512 * 1024), tmp_path, resume_settings())
    os.truncate(tmp_path / f"{NAME}.part", 1000)
    result = await download(srv.url(NAME), directory=tmp_path, settings=resume_settings())
    assert_ok(result)
    assert result.resumed == 0


# --- connections are kept ---------------------------------------------------------


async def test_one_connection_carries_the_probe_and_every_range(
    srv: RangeServer, tmp_path: Path, fast_path: bool
) -> None:
    # The HEAD, the probe's bytes=0-0 GET and each range in turn: a connection
    # is kept only after a whole response was read, so this counts that none
    # is left half-read (an early return at a range's last chunk, a HEAD closed unread).
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings(connections=1, fast_path=fast_path))
    assert_ok(result)
    assert len(range_gets(srv.requests)) == len(planned(len(DATA)))
    assert len({r.client for r in srv.requests}) == 1 == srv.accepted_connections
