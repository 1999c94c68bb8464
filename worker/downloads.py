"""The download records jobs act on: is there still work, and failing it with a clear reason.

A worker logs one line when a download starts (``log_started``, by the run
that moved it from queued) and one when it ends: complete (the finalizer)
or failed (``fail``, once, by whoever failed it).  Per-range lines are
debug lines (``rangefetch worker -v``).
"""

from __future__ import annotations

import logging

from rangefetch import RangefetchError, StateError
from rangefetch.display import format_bytes
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.plan import Range
from rangefetch.redact import redact_url

__all__ = ["SpecCache", "active_spec", "fail", "log_started"]

log = logging.getLogger(__name__)


# download id -> (spec revision, spec): what ``active_spec`` loaded, per worker process
SpecCache = dict[str, tuple[str, DownloadSpec]]
SPEC_CACHE_SIZE = 256  # downloads whose specs a worker keeps; the oldest is dropped beyond


async def active_spec(
    store: Store, download_id: str, cache: SpecCache | None = None
) -> tuple[DownloadSpec, DownloadState] | None:
    """The download's spec and state, or ``None`` when there is nothing to do for it.

    With ``cache``, a spec is loaded once per revision (``Store.state_rev``):
    the state and revision are one command, the spec three more.
    """
    if cache is None:
        state = await store.state(download_id)
        rev = None
    else:
        state, rev = await store.state_rev(download_id)
    if state is None or state.finished:
        log.debug("download %s is %s; nothing to do", download_id, state.value if state else "gone")
        if cache is not None:
            cache.pop(download_id, None)
        return None
    if cache is not None and rev is not None:
        known = cache.get(download_id)
        if known is not None and known[0] == rev:
            return known[1], state
    spec = await store.spec(download_id)
    if spec is None:
        return None
    if cache is not None and rev is not None:
        cache.pop(download_id, None)
        cache[download_id] = (rev, spec)
        while len(cache) > SPEC_CACHE_SIZE:
            del cache[next(iter(cache))]
    return spec, state


def log_started(spec: DownloadSpec) -> None:
    """The line a download's start gets in the log: once, by the job that started it."""
    ranges = f"{spec.ranges} range" + ("" if spec.ranges == 1 else "s")
    log.info("download %s started: %s (%s, %s)", spec.id, spec.path, format_bytes(spec.size), ranges)


async def fail(store: Store, download_id: str, exc: BaseException, *, rng: Range | None = None) -> bool:
    """Mark the download failed because of ``exc``; ``False`` if it had already finished.

    The reason is one line, and the URL in it (if any) is redacted.
    """
    if isinstance(exc, RangefetchError):
        reason = str(exc)
        if exc.url:
            reason = reason.replace(exc.url, redact_url(exc.url))
    else:
        reason = f"internal error: {type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())
    try:
        await store.set_state(download_id, DownloadState.FAILED, error=reason)
    except StateError:
        log.debug("download %s already finished; ignoring: %s", download_id, reason)
        return False
    if rng is not None:
        await store.fail_range(download_id, rng, reason)
    log.error("download %s failed: %s", download_id, reason)
    return True
