"""The producer: probe a URL, record the download in Redis, create its file, enqueue its ranges.

``enqueue()`` is idempotent.  The download id is derived from the URL and the
output path (``download_id``), so enqueuing the same URL to the same output
again finds the same record and only enqueues what is missing: ranges that
are neither done nor queued nor running.  That makes it the resume command
too: a failed or cancelled download keeps its ``.part`` file and its done
ranges, as long as the remote file still has the same size and validator
(ETag or Last-Modified); when it changed, or gives no validator to check,
the download starts over.

Output paths always lie inside ``Settings.download_dir``, the volume the
workers share; Redis stores them relative to it.

The chunk size keeps to embedded mode's bounds (``rangefetch.plan``): a
``--chunk-size`` below ``MIN_REQUESTED_CHUNK`` is refused before any
request, and one that would cut the file into more than ``MAX_RANGES``
ranges is grown, as each range costs a job and some 60 Redis commands.

The rate limit (``Settings.limit_rate``, ``--limit-rate``) is stored with
the download too: the workers hold it together, across the whole cluster
(``rangefetch.ratelimit``).

How the server is verified is part of the download: ``Settings.insecure``
and the CA certificates of ``Settings.ca_certificate`` (a file on this
host, so its PEM text is stored, not its path) go into the
``DownloadSpec``, and every worker verifies the server with exactly those,
wherever it runs.  Proxies, and the default trust store (``SSL_CERT_FILE``
and the like), are each host's own: the probe here uses this host's, the
workers theirs.

What goes into Redis is what the workers need to fetch the ranges, and
no more: the URL they fetch (the probe's final URL, with any password or
token in it) and the request headers that URL may receive
(``rangefetch.fetch.headers_for``: credentials given for another origin
stay out).  The URL the user gave is stored redacted, for ``status``.
Anyone who can read that Redis can read what is stored (README, "Secrets").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis

from rangefetch import (
    Backoff,
    Checksum,
    DownloadError,
    OutputExistsError,
    PartFile,
    PermanentError,
    RemoteFile,
    Settings,
    UnknownSizeError,
    UnsafePathError,
    UsageError,
    check_url,
    choose_chunk_size,
    make_client,
    output_candidates,
    partfile,
    plan_ranges,
    probe,
    redact_url,
    resolve_output,
)
from rangefetch.display import format_bytes
from rangefetch.distributed.queue import enqueue_finalizer, enqueue_ranges, ranges_per_job
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.network import read_ca_pem
from rangefetch.origin import headers_for
from rangefetch.plan import MAX_RANGES, check_chunk_size
from rangefetch.sink import existing_output

__all__ = ["DISTRIBUTED_RANGES_PER_CONNECTION", "Enqueued", "download_id", "enqueue", "resolve_target"]

log = logging.getLogger(__name__)

# Without --chunk-size, twice embedded mode's ranges per connection: the
# early verifier's tail is the last wave of ranges (they finish together and
# the file's sha256 must take them in order after the first of them), so
# smaller ranges end a download sooner; a range lost with a worker, and the
# grain at which downloads share the workers, are smaller too.  Each range
# costs a job and about 60 Redis commands.  Measured (bench/README.md): 2
# workers, 1 GiB capped, 16 MiB ranges 129.9 MB/s, 8 MiB ranges 132.1 MB/s.
DISTRIBUTED_RANGES_PER_CONNECTION = 8
_ACTIVE = (DownloadState.QUEUED, DownloadState.RUNNING)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What ``enqueue()`` did: the download's id and file, and how many jobs it added."""

    id: str
    path: Path
    size: int
    added: int
    state: DownloadState


def download_id(url: str, path: str) -> str:
    """The id of the download of ``url`` to ``path`` (relative to the download directory)."""
    return hashlib.sha256(f"{url}\n{path}".encode()).hexdigest()[:16]


def resolve_target(
    base: Path,
    remote: RemoteFile | None,
    *,
    output: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The absolute final path of a download, inside ``base``.

    ``output`` is taken relative to ``base``; ``directory`` must lie inside
    ``base`` and gets the name the server suggests.  Without ``remote`` (not
    probed yet) only what can be checked is checked, and ``None`` is returned
    unless ``output`` settles the path.

    Raises:
        UsageError: both ``output`` and ``directory`` are given.
        UnsafePathError: the path or directory lies outside ``base``.
    """
    if output is not None and directory is not None:
        raise UsageError("use either -o PATH or -d DIR, not both")
    base = base.resolve()
    if output is not None:
        return resolve_output(base, output, confine=True)
    folder = base
    if directory is not None:
        folder = (base / directory).resolve()
        if not folder.is_relative_to(base):
            raise UnsafePathError(f"directory {str(directory)!r} is outside the download directory {base}")
    if remote is None:
        return None
    return resolve_output(folder, None, candidates=output_candidates(remote), confine=True)


async def enqueue(
    url: str,
    *,
    settings: Settings,
    redis: Redis,
    output: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    headers: Mapping[str, str] | None = None,
    checksum: Checksum | None = None,
    client: httpx.AsyncClient | None = None,
) -> Enqueued:
    """Record the download of ``url`` and enqueue the jobs it still needs.

    Args:
        url: an http:// or https:// URL of a server that supports ranges.
        settings: download directory, queue name, connections, chunk size;
            its ``insecure``, ``ca_certificate`` and ``limit_rate`` are stored with the download.
        redis: the Redis holding the queue and the download records.
        output: the file, relative to ``settings.download_dir``.
        directory: a folder inside the download directory; the server names the file.
        headers: request headers; those the final URL may receive are
            stored apart from the record, never shown.
        checksum: a digest the finalizer verifies the file against.
        client: an httpx client for the probe instead of one from ``settings``.

    Raises:
        UsageError: a bad URL or flag (a chunk size below the floor), or a
            CA certificate file that cannot be read.
        UnsafePathError: the output lies outside the download directory.
        PermanentError: the server cannot serve ranges; UnknownSizeError: no size.
        OutputExistsError: a file is at the output path, and the download is not complete.
        DownloadError: the probe failed, or the file cannot be created.
        QueueError: Redis failed.
    """
    url = check_url(url)  # with http:// in front if it names no scheme, as curl does
    check_chunk_size(settings.chunk_size)
    base = settings.download_dir.resolve()
    resolve_target(base, None, output=output, directory=directory)  # fail fast, before the network
    ca_pem = await asyncio.to_thread(read_ca_pem, settings.ca_certificate) if settings.ca_certificate else None
    headers = dict(headers or {})
    remote = await _probe(url, settings, headers, client)
    size = _distributable_size(remote)
    final = resolve_target(base, remote, output=output, directory=directory)
    assert final is not None
    path = final.relative_to(base).as_posix()
    did = download_id(url, path)
    store = Store(redis)

    state = await store.state(did)
    if state is DownloadState.VERIFYING or (state is DownloadState.COMPLETE and await _exists(final)):
        log.info("download %s is %s; nothing to enqueue", did, state.value)
        return Enqueued(did, final, size, 0, state)
    if state in _ACTIVE:
        return await _enqueue_missing(store, settings, did, final)
    found = await asyncio.to_thread(existing_output, final, size=size, last_modified=remote.last_modified)
    if found is not None:  # the finalizer would not replace it (PartFile.commit): say so now, not after the download
        raise OutputExistsError(f"{final} already exists and {found.why}: not replaced; move it away to download again")
    async with partfile.locked(PartFile(final).part) as fd:  # one producer at a time per file
        state = await store.state(did)  # another producer may have been first
        if state is not None and not state.finished:
            return await _enqueue_missing(store, settings, did, final)
        chunk = _chunk_size(size, settings)
        ranges = len(plan_ranges(size, chunk))
        job_ranges = ranges_per_job(ranges, chunk, settings.distributed.jobs.per_download)
        current = await store.spec(did)
        keep = False
        if current is not None and state is not DownloadState.COMPLETE:
            why = _mismatch(current, remote)
            keep = why is None and await asyncio.to_thread(partfile.size_of, fd) == size
            if keep:  # the same ranges and cells: the progress recorded is theirs
                chunk, ranges, job_ranges = current.chunk_size, current.ranges, current.job_ranges
            else:
                log.warning("download %s starts over: %s", did, why or "its .part file is missing")
        if not keep:
            await asyncio.to_thread(_allocate, fd, size)
        spec = DownloadSpec(
            id=did,
            url=redact_url(url),  # for status; workers fetch final_url
            final_url=remote.final_url,
            size=size,
            path=path,
            chunk_size=chunk,
            ranges=ranges,
            connections=settings.connections,
            etag=remote.etag,
            last_modified=remote.last_modified,
            checksum=str(checksum) if checksum else None,
            headers=headers_for(remote, headers),  # what the workers will send, no more
            insecure=settings.insecure,
            ca_pem=ca_pem,
            limit_rate=settings.limit_rate,
            job_ranges=job_ranges,
        )
        if current is None and await store.create(spec):
            state = DownloadState.QUEUED
        else:
            await store.update_spec(spec)
            if not keep:
                await store.forget_ranges(did)
            status = await store.status(did)
            await store.reset_for_resume(did, resumed=status["completedLength"] if status else 0)
            await store.set_state(did, DownloadState.QUEUED)
            state = DownloadState.QUEUED
        added = await _enqueue_todo(store, settings, spec)
    log.info("download %s of %s to %s: %d jobs enqueued", did, redact_url(url), path, added)
    return Enqueued(did, final, size, added, state)


async def _enqueue_missing(store: Store, settings: Settings, did: str, final: Path) -> Enqueued:
    """Enqueue what an active download lacks (a job lost with a worker, say), touching nothing else."""
    spec = await store.spec(did)
    state = await store.state(did)
    if spec is None or state is None:
        raise DownloadError(f"download {did} vanished while it was being enqueued")
    added = await _enqueue_todo(store, settings, spec)
    log.info("download %s is %s: %d missing jobs enqueued", did, state.value, added)
    return Enqueued(did, final, spec.size, added, state)


async def _enqueue_todo(store: Store, settings: Settings, spec: DownloadSpec) -> int:
    """Enqueue the ranges of ``spec`` that are not done, or the finalizer when all are."""
    done = await store.done_ranges(spec.id)
    todo = plan_ranges(spec.size, spec.chunk_size, skip=done)
    if todo:
        return await enqueue_ranges(
            store.redis, settings.distributed.queue_name, spec.id, todo, cells=(spec.size, spec.job_bytes)
        )
    return int(await enqueue_finalizer(store.redis, settings.distributed.queue_name, spec.id))


async def _probe(url: str, settings: Settings, headers: dict[str, str], client: httpx.AsyncClient | None) -> RemoteFile:
    http = client or make_client(settings)
    try:
        return await probe(http, url, headers=headers, backoff=Backoff(settings.retry))
    finally:
        if client is None:
            await http.aclose()


def _chunk_size(size: int, settings: Settings) -> int:
    """The range length for a new download of ``size`` bytes: the one asked for, within embedded mode's bounds."""
    requested = settings.chunk_size
    chunk = choose_chunk_size(
        size, settings.connections, per_connection=DISTRIBUTED_RANGES_PER_CONNECTION, requested=requested
    )
    if requested is not None and chunk != requested:
        log.warning(
            "chunk size %s would cut %s into more than %d ranges; using %s",
            format_bytes(requested), format_bytes(size), MAX_RANGES, format_bytes(chunk),
        )  # fmt: skip
    return chunk


def _distributable_size(remote: RemoteFile) -> int:
    """The size of a file the workers can fetch in ranges.

    Raises:
        UnknownSizeError: the server does not say how large the file is.
        PermanentError: the server ignores ``Range``.
    """
    url = redact_url(remote.url)
    hint = "download it with `rangefetch get` without Redis (embedded mode)"
    if remote.size is None:
        raise UnknownSizeError(f"{url} has no known size, so it cannot be split among workers; {hint}", url=url)
    if remote.size > 0 and not remote.ranges:
        raise PermanentError(f"{url} does not support range requests, so it cannot be distributed; {hint}", url=url)
    return remote.size


def _mismatch(spec: DownloadSpec, remote: RemoteFile) -> str | None:
    """Why the recorded download cannot be resumed onto ``remote``, or ``None`` if it can."""
    if remote.size != spec.size:
        return f"size changed from {spec.size} to {remote.size} bytes"
    if not (spec.etag or spec.last_modified):
        return "the server gives no ETag or Last-Modified to check the file against"
    if spec.etag != remote.etag:
        return "the ETag changed"
    if spec.last_modified != remote.last_modified:
        return "Last-Modified changed"
    return None


def _allocate(fd: int, size: int) -> None:
    """Empty the file and give it ``size`` bytes, durably, so workers can write anywhere in it.

    Raises:
        NoSpaceError: it does not fit (it is left empty).
        DownloadError: the file system refused otherwise.
    """
    try:
        partfile.reset(fd, size)
        os.fsync(fd)
    except OSError as exc:
        raise DownloadError(f"cannot allocate {size} bytes: {exc.strerror}") from exc


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.is_file)
