"""A download's record in Redis: ``DownloadSpec``, and creating, loading, updating it and its state.

Request headers live in their own hash and are only read by workers:
``status`` never sees them, and URLs are shown redacted.  A download's own
CA certificates (PEM text, public but possibly a large bundle) live in
their own key too, so the status reads that poll the download's hash never
carry them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import QueueError, StateError
from . import keys, scripts
from .access import RedisAccess
from .state import DownloadState
from .status import as_str as _s

__all__ = ["DownloadRecords", "DownloadSpec"]


@dataclass(frozen=True, slots=True)
class DownloadSpec:
    """What the producer records about a download: everything a worker needs."""

    id: str
    url: str
    final_url: str
    size: int
    path: str
    chunk_size: int
    ranges: int
    connections: int
    etag: str | None = None
    last_modified: str | None = None
    checksum: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # How the workers verify the server, decided by whoever enqueued it:
    # skip verification, or trust exactly these CA certificates (PEM text
    # read from the producer's --ca-certificate).  Neither: the worker's own trust.
    insecure: bool = False
    ca_pem: str | None = field(default=None, repr=False)  # long: kept out of log lines
    limit_rate: int = 0  # bytes/s over the whole cluster (--limit-rate); 0: no limit
    job_ranges: int = 1  # consecutive ranges one range job fetches (queue.ranges_per_job)

    @property
    def job_bytes(self) -> int:
        """The bytes one range job covers: its cell (``queue.job_cells``)."""
        return self.chunk_size * self.job_ranges

    def fields(self) -> dict[str, str]:
        """The hash fields to store (headers and the CA certificates go elsewhere)."""
        data = asdict(self)
        data.pop("headers")
        data.pop("ca_pem")
        data["insecure"] = "1" if self.insecure else "0"
        return {k: str(v) for k, v in data.items() if v is not None}


class DownloadRecords(RedisAccess):
    """``Store``'s part for the download's record: its spec, headers, CA certificates and state."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self._create = redis.register_script(scripts.CREATE)
        self._set_state = redis.register_script(scripts.SET_STATE)

    async def create(self, spec: DownloadSpec) -> bool:
        """Record ``spec`` as a queued download, in one step (``scripts.CREATE``); ``False`` if the id is known."""
        now = str(time.time())
        record = {**spec.fields(), "state": DownloadState.QUEUED.value, "created": now, "rev": _rev()}
        fields = [item for pair in record.items() for item in pair]
        headers = [item for pair in spec.headers.items() for item in pair]
        ca = ["1", spec.ca_pem] if spec.ca_pem is not None else ["0"]
        k = keys.download_key
        script_keys = [k(spec.id), k(spec.id, "headers"), k(spec.id, "ca"), keys.DOWNLOADS]
        args = [spec.id, now, str(len(fields)), *fields, str(len(headers)), *headers, *ca]
        try:
            return bool(await self._create(keys=script_keys, args=args))
        except RedisError as exc:
            raise QueueError(f"cannot record download {spec.id}: {exc}") from exc

    async def update_spec(self, spec: DownloadSpec) -> None:
        """Refresh the probe facts and headers of a known download (a re-enqueue)."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.download_key(spec.id), mapping={**spec.fields(), "rev": _rev()})
                # An optional fact that is gone now (no ETag any more, no checksum asked) must not linger.
                gone = [k for k in ("etag", "last_modified", "checksum") if getattr(spec, k) is None]
                if gone:
                    pipe.hdel(keys.download_key(spec.id), *gone)
                headers_key = keys.download_key(spec.id, "headers")
                pipe.delete(headers_key)
                if spec.headers:
                    pipe.hset(headers_key, mapping=dict(spec.headers))
                ca_key = keys.download_key(spec.id, "ca")
                if spec.ca_pem is None:
                    pipe.delete(ca_key)
                else:
                    pipe.set(ca_key, spec.ca_pem)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"cannot update download {spec.id}: {exc}") from exc

    async def get(self, download_id: str) -> dict[str, str] | None:
        """The download's fields, or ``None`` if there is no such download."""
        data = await self._call(self.redis.hgetall(keys.download_key(download_id)))
        return {_s(k): _s(v) for k, v in data.items()} if data else None

    async def spec(self, download_id: str) -> DownloadSpec | None:
        """The ``DownloadSpec`` (with headers and CA certificates) a worker needs, or ``None``.

        Records written before a field existed load with its default.
        """
        data = await self.get(download_id)
        if data is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.download_key(download_id, "headers"))
            pipe.get(keys.download_key(download_id, "ca"))
            headers, ca_pem = await self._call(pipe.execute())
        return DownloadSpec(
            id=data["id"],
            url=data["url"],
            final_url=data["final_url"],
            size=int(data["size"]),
            path=data["path"],
            chunk_size=int(data["chunk_size"]),
            ranges=int(data["ranges"]),
            connections=int(data["connections"]),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
            checksum=data.get("checksum"),
            headers={_s(k): _s(v) for k, v in headers.items()},
            insecure=data.get("insecure") == "1",
            ca_pem=_s(ca_pem) if ca_pem is not None else None,
            limit_rate=int(data.get("limit_rate") or 0),
            job_ranges=int(data.get("job_ranges") or 1),
        )

    async def state_rev(self, download_id: str) -> tuple[DownloadState | None, str | None]:
        """The download's state and the revision of its spec (new on every ``create`` and ``update_spec``).

        A worker keeps the specs it has loaded by revision, so a range run
        costs one command to learn that its download is still active and its
        spec unchanged, instead of three to load the spec again.
        """
        state, rev = await self._call(self.redis.hmget(keys.download_key(download_id), ["state", "rev"]))
        return (DownloadState(_s(state)) if state else None), (_s(rev) if rev is not None else None)

    async def state(self, download_id: str) -> DownloadState | None:
        """The download's state, or ``None`` if it is unknown."""
        value = await self._call(self.redis.hget(keys.download_key(download_id), "state"))
        return DownloadState(_s(value)) if value else None

    async def set_state(
        self, download_id: str, new: DownloadState, *, error: str | None = None, **extra: str
    ) -> DownloadState:
        """Move the download to ``new`` with its fields, atomically; returns the previous state.

        ``error`` and ``extra`` are stored with the state; ``started`` is set
        when the download starts running, ``finished`` when it ends.  The new
        state is published on ``keys.state_channel``.

        Raises:
            StateError: the transition is illegal, or the download is unknown.
        """
        allowed = [s.value for s in DownloadState if s.can_become(new)]
        now = str(time.time())
        fields = dict(extra)
        if error is not None:
            fields["error"] = error
        if new.finished:
            fields["finished"] = now
        pairs = [item for field in fields.items() for item in field]
        started = "1" if new is DownloadState.RUNNING and "started" not in fields else "0"
        channel = keys.state_channel(download_id)
        args = [new.value, now, channel, started, str(len(pairs)), *pairs, *allowed]
        ok, previous = await self._call(self._set_state(keys=[keys.download_key(download_id)], args=args))
        if ok == -1:
            raise StateError(f"no download {download_id}")
        if ok == 0:
            DownloadState(_s(previous)).check(new)
        return DownloadState(_s(previous))

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
        """Listen on ``channel`` (``keys.state_channel``, ``keys.done_channel``).

        Yields ``wait(timeout)``, which returns at the next message or after
        ``timeout`` seconds.  Listen before reading what the messages are
        about, so that a change in between is not missed.

        Raises:
            QueueError: Redis failed.
        """
        pubsub = self.redis.pubsub()
        try:
            await self._call(pubsub.subscribe(channel))

            async def wait(timeout: float) -> None:
                await self._call(pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout))

            yield wait
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def reset_for_resume(self, download_id: str, *, resumed: int) -> None:
        """Clear a download's error, failures and guards before it is enqueued again."""
        key = keys.download_key(download_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(key, "error", "finished", "sha256", "verified")
            pipe.hset(key, "resumed", str(resumed))
            for part in ("failed", "inflight", "finalize", "verifier", "redo", "attempts", "handoffs"):
                pipe.delete(keys.download_key(download_id, part))
            await self._call(pipe.execute())

    async def list_ids(self) -> list[str]:
        """Known download ids, oldest first."""
        return [_s(i) for i in await self._call(self.redis.zrange(keys.DOWNLOADS, 0, -1))]


def _rev() -> str:
    """A new revision of a download's spec (``Store.state_rev``)."""
    return secrets.token_hex(6)
