"""The dashboard's buttons: cancel and resume a download, as ``rangefetch cancel`` and ``enqueue`` do.

Cancel is ``producer.monitor.cancel``.  Resume is ``producer.enqueue.enqueue``
with what the download's record holds: its URL, output path, request
headers, checksum and TLS choices, so it finds the same download id and
only queues what is missing.  The id is derived from the URL the user gave
(``enqueue.download_id``), and Redis keeps that URL redacted when it held a
secret; then the probe's final URL is tried, and if neither gives the id
back the download must be resumed from the command line.

Resuming probes the server and opens the ``.part`` file, like ``enqueue``:
the dashboard must see the download directory the workers share.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from redis.asyncio import Redis

from rangefetch import Checksum, Settings, UsageError
from rangefetch.distributed.store import DownloadSpec, Store

from ..enqueue import Enqueued, download_id, enqueue
from ..monitor import cancel

__all__ = ["ResumeRefused", "cancel_download", "resume_download"]


class ResumeRefused(UsageError):
    """The download cannot be resumed from the page (its URL is only stored redacted)."""


async def cancel_download(store: Store, redis: Redis, settings: Settings, did: str) -> int:
    """``rangefetch cancel``: returns how many queued jobs went.

    Raises:
        UsageError: no such download.  StateError: it cannot be cancelled now.  QueueError: Redis failed.
    """
    return await cancel(store, redis, settings, did)


async def resume_download(store: Store, redis: Redis, settings: Settings, did: str) -> Enqueued:
    """``rangefetch enqueue`` of the download ``did`` again: queue what it still needs.

    Raises:
        UsageError: no such download.  ResumeRefused: its URL is stored only redacted.
        RangefetchError: whatever ``enqueue`` raises (probe, path, Redis).
    """
    spec = await store.spec(did)
    if spec is None:
        raise UsageError(f"no download {did}")
    url = next((u for u in (spec.url, spec.final_url) if download_id(u, spec.path) == did), None)
    if url is None:
        raise ResumeRefused(
            f"download {did} was queued with a URL Redis keeps only redacted; resume it with `rangefetch enqueue`"
        )
    with _ca_file(spec) as ca:
        resumed = settings.model_copy(
            update={
                "connections": spec.connections,
                "chunk_size": spec.chunk_size,
                "limit_rate": spec.limit_rate,
                "insecure": spec.insecure,
                "ca_certificate": ca,
            }
        )
        checksum = Checksum.parse(spec.checksum) if spec.checksum else None
        return await enqueue(
            url, settings=resumed, redis=redis, output=spec.path, headers=dict(spec.headers), checksum=checksum
        )


@contextlib.contextmanager
def _ca_file(spec: DownloadSpec) -> Iterator[Path | None]:
    """The download's own CA certificates as a file for ``Settings.ca_certificate`` (``None`` without)."""
    if spec.ca_pem is None:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="rangefetch-ca-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(spec.ca_pem)
        yield Path(name)
    finally:
        os.unlink(name)
