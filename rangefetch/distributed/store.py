"""Distributed state in Redis: downloads, range progress, connection slots, workers.

The producer, the workers and the monitoring commands all go through this
one class, so the layout of the keys (``keys.py``) has one reader and writer.
Multi-key updates that must be atomic run as Lua scripts (``scripts.py``);
the status record is assembled in ``status.py``.  Request headers live in
their own hash and are only read by workers: ``status`` never sees them,
and URLs are shown redacted.  A download's own CA certificates (PEM text,
public but possibly a large bundle) live in their own key too, so the
status reads that poll the download's hash never carry them.

Rate limits (``ratelimit.py``) are GCRA schedules in Redis
(``scripts.GCRA``): a download's ``limit_rate`` and a server host's cap
(``Settings.per_host_rate``).  ``Store.throttle`` gives a range job its
share: one ``BatchedThrottle`` per download and caps in each process,
shared by its jobs, taking tokens from Redis a batch at a time.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import QueueError, StateError
from ..plan import Range
from ..ratelimit import AHEAD, TOLERANCE, BatchedThrottle, TimedThrottle, batch_for
from ..transport import read_size_for
from . import keys, scripts
from .state import DownloadState
from .status import as_str as _s
from .status import build_status

__all__ = ["VERIFIER_STOPPED", "DownloadSpec", "Store", "WorkerInfo"]

HEARTBEAT_TTL = 30  # seconds a worker counts as alive after its last heartbeat
VERIFIER_STOPPED = "stopped"  # the verifier lease's value once its holder gave up


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

    def fields(self) -> dict[str, str]:
        """The hash fields to store (headers and the CA certificates go elsewhere)."""
        data = asdict(self)
        data.pop("headers")
        data.pop("ca_pem")
        data["insecure"] = "1" if self.insecure else "0"
        return {k: str(v) for k, v in data.items() if v is not None}


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as its heartbeat describes it."""

    id: str
    host: str
    pid: int
    jobs: int
    heartbeat: float
    interface: str | None = None  # the local address it connects from (``--interface``), if set


class Store:
    """Typed access to rangefetch's Redis state.

    Every method translates Redis failures into ``QueueError``.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._create = redis.register_script(scripts.CREATE)
        self._set_state = redis.register_script(scripts.SET_STATE)
        self._mark_done = redis.register_script(scripts.MARK_DONE)
        self._set_progress = redis.register_script(scripts.SET_PROGRESS)
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._acquire_fair = redis.register_script(scripts.ACQUIRE_FAIR)
        self._renew = redis.register_script(scripts.RENEW)
        self._owned_set = redis.register_script(scripts.OWNED_SET)
        self._owned_delete = redis.register_script(scripts.OWNED_DELETE)
        self._owned_hdel = redis.register_script(scripts.OWNED_HDEL)
        self._gcra = redis.register_script(scripts.GCRA)
        # One throttle per download and caps, shared by this process's jobs while any holds it.
        self._throttles: weakref.WeakValueDictionary[tuple[tuple[str, int], ...], BatchedThrottle] = (
            weakref.WeakValueDictionary()
        )

    # -- downloads ---------------------------------------------------------

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

    async def forget_ranges(self, download_id: str) -> None:
        """Forget every finished range, its progress and digest: the file starts over."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for part in ("done", "progress", "digest", "redo"):
                pipe.delete(keys.download_key(download_id, part))
            pipe.hdel(keys.download_key(download_id), "verified")
            await self._call(pipe.execute())

    async def list_ids(self) -> list[str]:
        """Known download ids, oldest first."""
        return [_s(i) for i in await self._call(self.redis.zrange(keys.DOWNLOADS, 0, -1))]

    # -- ranges ------------------------------------------------------------

    async def done_ranges(self, download_id: str) -> set[Range]:
        """Ranges finished and fsynced."""
        members = await self._call(self.redis.smembers(keys.download_key(download_id, "done")))
        return {Range.parse(_s(m)) for m in members}

    async def done_count(self, download_id: str) -> int:
        """How many ranges are finished and fsynced."""
        return int(await self._call(self.redis.scard(keys.download_key(download_id, "done"))))

    async def progress(self, download_id: str, rng: Range) -> int:
        """Bytes of ``rng`` known to be on disk (fsynced)."""
        value = await self._call(self.redis.hget(keys.download_key(download_id, "progress"), str(rng)))
        return int(value) if value else 0

    async def set_progress(self, download_id: str, rng: Range, done: int) -> None:
        """Record that the first ``done`` bytes of ``rng`` are fsynced (an absolute count, never added).

        Progress never goes backwards: a range already done keeps its full
        length, and a count below the recorded one is ignored, so a worker
        that lost its lease cannot make the range's progress read low
        (``scripts.SET_PROGRESS``).  ``redo`` and ``forget_ranges`` start a range over.
        """
        k = keys.download_key
        await self._call(
            self._set_progress(keys=[k(download_id, "done"), k(download_id, "progress")], args=[str(rng), str(done)])
        )

    async def start_range(self, download_id: str, rng: Range, worker_id: str) -> None:
        """Note that ``worker_id`` is fetching ``rng``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.download_key(download_id, "inflight"), str(rng), worker_id)
            pipe.sadd(keys.download_key(download_id, "workers"), worker_id)
            await self._call(pipe.execute())

    async def stop_range(self, download_id: str, rng: Range, worker_id: str) -> None:
        """Note that ``worker_id`` is no longer fetching ``rng`` (unless another worker has taken it since)."""
        key = keys.download_key(download_id, "inflight")
        await self._call(self._owned_hdel(keys=[key], args=[str(rng), worker_id]))

    async def mark_done(self, download_id: str, rng: Range, digest: str) -> int:
        """Record ``rng`` as finished with its digest; returns how many ranges are done (and tells ``done_channel``)."""
        k = keys.download_key
        parts = ("done", "progress", "digest", "inflight", "failed")
        args = [str(rng), str(rng.length), digest, keys.done_channel(download_id)]
        count = await self._call(self._mark_done(keys=[k(download_id, p) for p in parts], args=args))
        return int(count)

    async def fail_range(self, download_id: str, rng: Range, reason: str) -> None:
        """Record why ``rng`` failed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.download_key(download_id, "failed"), str(rng), reason)
            pipe.hdel(keys.download_key(download_id, "inflight"), str(rng))
            await self._call(pipe.execute())

    async def count_attempt(self, download_id: str, rng: Range, *, progressed: bool) -> int:
        """Count a run of ``rng``'s job: returns the runs in a row without progress (0 after progress)."""
        key = keys.download_key(download_id, "attempts")
        if progressed:
            await self._call(self.redis.hdel(key, str(rng)))
            return 0
        return int(await self._call(self.redis.hincrby(key, str(rng), 1)))

    async def count_handoff(self, download_id: str, rng: Range) -> int:
        """Count a run of ``rng`` asking to hand the range to a fresh connection; returns how often it was asked.

        The count starts over when the download is enqueued again (``reset_for_resume``).
        """
        key = keys.download_key(download_id, "handoffs")
        return int(await self._call(self.redis.hincrby(key, str(rng), 1)))

    async def digests(self, download_id: str) -> dict[Range, str]:
        """The recorded digest of every finished range."""
        data = await self._call(self.redis.hgetall(keys.download_key(download_id, "digest")))
        return {Range.parse(_s(k)): _s(v) for k, v in data.items()}

    async def digests_of(self, download_id: str, ranges: Sequence[Range]) -> list[str | None]:
        """The recorded digest of each of ``ranges``; ``None`` where a range is not done."""
        if not ranges:
            return []
        values = await self._call(self.redis.hmget(keys.download_key(download_id, "digest"), [str(r) for r in ranges]))
        return [_s(v) if v is not None else None for v in values]

    async def redo(self, download_id: str, rng: Range) -> int:
        """Forget that ``rng`` was done so it is fetched again; returns how often that happened."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.download_key(download_id, "done"), str(rng))
            pipe.hdel(keys.download_key(download_id, "progress"), str(rng))
            pipe.hdel(keys.download_key(download_id, "digest"), str(rng))
            pipe.hincrby(keys.download_key(download_id, "redo"), str(rng), 1)
            result = await self._call(pipe.execute())
        return int(result[-1])

    async def claim_finalizer(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Take the guard that lets exactly one finalizer run, for ``owner``; ``False`` if it is taken.

        The guard is a lease like the verifier's: it holds its owner's token
        and lapses ``ttl`` seconds after it was last renewed.
        """
        key = keys.download_key(download_id, "finalize")
        return bool(await self._call(self.redis.set(key, owner, nx=True, px=_ms(ttl))))

    async def renew_finalizer(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Extend ``owner``'s finalizer guard; ``False`` if ``owner`` no longer holds it."""
        key = keys.download_key(download_id, "finalize")
        return bool(await self._call(self._owned_set(keys=[key], args=[owner, owner, str(_ms(ttl))])))

    async def release_finalizer(self, download_id: str, owner: str) -> None:
        """Give ``owner``'s finalizer guard back (after re-enqueuing ranges, or at the end)."""
        await self._call(self._owned_delete(keys=[keys.download_key(download_id, "finalize")], args=[owner]))

    async def claim_verifier(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Take the lease of the download's early verifier for ``owner``; ``False`` if it is held (or stopped)."""
        key = keys.download_key(download_id, "verifier")
        return bool(await self._call(self.redis.set(key, owner, nx=True, px=_ms(ttl))))

    async def renew_verifier(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Extend ``owner``'s verifier lease; ``False`` if ``owner`` no longer holds it."""
        key = keys.download_key(download_id, "verifier")
        return bool(await self._call(self._owned_set(keys=[key], args=[owner, owner, str(_ms(ttl))])))

    async def stop_verifier(self, download_id: str, owner: str, *, ttl: float) -> None:
        """Mark ``owner``'s verifier as given up: for ``ttl`` no new one starts and the finalizer does not wait."""
        key = keys.download_key(download_id, "verifier")
        await self._call(self._owned_set(keys=[key], args=[owner, VERIFIER_STOPPED, str(_ms(ttl))]))

    async def release_verifier(self, download_id: str, owner: str) -> None:
        """Give ``owner``'s verifier lease back."""
        await self._call(self._owned_delete(keys=[keys.download_key(download_id, "verifier")], args=[owner]))

    async def verifier(self, download_id: str) -> str | None:
        """The owner of the download's live early verifier, or ``None``."""
        value = await self._call(self.redis.get(keys.download_key(download_id, "verifier")))
        owner = _s(value) if value is not None else None
        return None if owner == VERIFIER_STOPPED else owner

    async def note_retry(self, download_id: str, reason: str, at: float) -> None:
        """Record the download's latest retry wait: why, and when (unix time) it ends (shown by ``status``)."""
        fields = {"retry_reason": reason, "retry_at": str(at)}
        await self._call(self.redis.hset(keys.download_key(download_id), mapping=fields))

    async def set_verified(self, download_id: str, nbytes: int) -> None:
        """Record that the first ``nbytes`` of the file are verified (shown by ``status``)."""
        await self._call(self.redis.hset(keys.download_key(download_id), "verified", str(nbytes)))

    # -- connection slots ----------------------------------------------------

    async def acquire_slots(self, token: str, limits: Mapping[str, int], *, ttl: float) -> bool:
        """Take one slot in each semaphore key of ``limits`` (key -> limit), all or none."""
        names = list(limits)
        args = [token, str(ttl), *(str(limits[n]) for n in names)]
        return bool(await self._call(self._acquire(keys=names, args=args)))

    async def acquire_fair(
        self, token: str, owner: str, limits: Mapping[str, int], *, waiters: str, ttl: float, wait_ttl: float
    ) -> bool:
        """Like ``acquire_slots``, with the first key of ``limits`` shared fairly among owners.

        ``token`` must read ``OWNER:...``; ``waiters`` is the zset of owners
        waiting for the first key, forgotten ``wait_ttl`` seconds after they
        last asked (see ``scripts.ACQUIRE_FAIR``).
        """
        names = list(limits)
        if not names:
            raise ValueError("acquire_fair needs at least one semaphore")
        args = [token, str(ttl), owner, str(wait_ttl), *(str(limits[n]) for n in names)]
        script_keys = [names[0], waiters, *names[1:]]
        return bool(await self._call(self._acquire_fair(keys=script_keys, args=args)))

    async def renew_slots(self, token: str, names: list[str], *, ttl: float) -> bool:
        """Extend the lease of ``token`` in each semaphore; ``False`` if one had lapsed (then none is extended)."""
        return bool(await self._call(self._renew(keys=names, args=[token, str(ttl)])))

    async def release_slots(self, token: str, names: list[str]) -> None:
        """Give the slots of ``token`` back."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(name, token)
            await self._call(pipe.execute())

    # -- rate limits ---------------------------------------------------------

    async def take_rate(self, limits: Mapping[str, int], n: int, *, tolerance: float = TOLERANCE) -> float:
        """Take ``n`` bytes from each GCRA schedule in ``limits`` (key -> bytes/s); returns the seconds to wait."""
        names = list(limits)
        args = [str(n), str(tolerance), *(str(limits[k]) for k in names)]
        return float(_s(await self._call(self._gcra(keys=names, args=args))))

    def throttle(self, spec: DownloadSpec, host: str, *, host_rate: int) -> TimedThrottle | None:
        """A range job's share of the rate limits on ``spec`` (its ``limit_rate``, and ``host_rate`` for ``host``).

        ``None`` when neither is set.  The tokens come from one
        ``BatchedThrottle`` per download and limits in this process, shared
        by its jobs; the ``TimedThrottle`` around it tells the job how long
        it waited for them.
        """
        limits = {}
        if spec.limit_rate:
            limits[keys.download_key(spec.id, "rate")] = spec.limit_rate
        if host_rate:
            limits[keys.rate_host(host)] = host_rate
        if not limits:
            return None
        key = tuple(sorted(limits.items()))
        shared = self._throttles.get(key)
        if shared is None:
            rate = min(limits.values())
            # Each read is paid for first: reads sized to the rate, as in embedded mode.
            ahead = read_size_for(AHEAD, spec.connections, rate)
            shared = BatchedThrottle(lambda n: self.take_rate(limits, n), batch=batch_for(rate), ahead=ahead)
            self._throttles[key] = shared
        return TimedThrottle(shared)

    # -- workers -------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Announce that a worker is alive."""
        key = keys.worker_key(info.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in asdict(info).items() if v is not None})
            pipe.expire(key, HEARTBEAT_TTL)
            pipe.zadd(keys.WORKERS, {info.id: info.heartbeat})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", time.time() - HEARTBEAT_TTL)
            await self._call(pipe.execute())

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a worker that is shutting down."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker_key(worker_id))
            pipe.zrem(keys.WORKERS, worker_id)
            await self._call(pipe.execute())

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent, by id."""
        ids = await self._call(self.redis.zrangebyscore(keys.WORKERS, time.time() - HEARTBEAT_TTL, "+inf"))
        found = []
        for worker_id in sorted(_s(i) for i in ids):
            data = await self._call(self.redis.hgetall(keys.worker_key(worker_id)))
            if data:
                d = {_s(k): _s(v) for k, v in data.items()}
                found.append(
                    WorkerInfo(
                        d["id"], d["host"], int(d["pid"]), int(d["jobs"]), float(d["heartbeat"]), d.get("interface")
                    )
                )
        return found

    # -- status --------------------------------------------------------------

    async def status(self, download_id: str, *, now: float | None = None) -> dict[str, Any] | None:
        """What ``rangefetch status`` shows, with aria2 ``tellStatus`` names where they fit."""
        data = await self.get(download_id)
        if data is None:
            return None
        k = keys.download_key
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(k(download_id, "done"))
            pipe.hvals(k(download_id, "progress"))
            pipe.hlen(k(download_id, "inflight"))
            pipe.hgetall(k(download_id, "failed"))
            pipe.smembers(k(download_id, "workers"))
            done, progress, inflight, failed, workers = await self._call(pipe.execute())
        return build_status(data, done, [int(p) for p in progress], inflight, failed, workers, now=now)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise QueueError(f"Redis error: {exc}") from exc


def _rev() -> str:
    """A new revision of a download's spec (``Store.state_rev``)."""
    return secrets.token_hex(6)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
