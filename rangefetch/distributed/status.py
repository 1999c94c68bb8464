"""The status record of a distributed download, as ``rangefetch status`` shows it.

``build_status`` is pure: ``Store.status`` reads the pieces from Redis and
hands them over.  Field names follow aria2's ``tellStatus`` where they fit.
Ours: ``retryReason``, ``retryIn`` and ``retryAt`` describe the latest retry
wait of any of the download's ranges (``Store.note_retry``) while it lasts:
why ("HTTP 503", "too slow"), seconds left, and when it ends (unix time).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

from ..redact import redact_url
from .state import DownloadState

__all__ = ["ARIA2_STATUS", "as_str", "build_status"]


def build_status(
    data: dict[str, str],
    done: int,
    progress: list[int],
    inflight: int,
    failed: Mapping[Any, Any],
    workers: set[Any],
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Assemble one status record (pure; ``now`` is injectable for tests)."""
    now = time.time() if now is None else now
    size = int(data["size"])
    completed = min(size, sum(progress))
    state = DownloadState(data["state"])
    started = float(data["started"]) if "started" in data else None
    resumed = int(data.get("resumed", "0"))
    speed = 0.0
    if started is not None and not state.finished and now > started:
        speed = max(0.0, (completed - resumed) / (now - started))
    eta = (size - completed) / speed if speed > 0 else None
    failures = {as_str(r): as_str(e) for r, e in failed.items()}
    retry_at = float(data.get("retry_at") or 0)
    retrying = not state.finished and retry_at > now
    last_error = data.get("error") or (next(iter(failures.values())) if failures else None)
    return {
        "gid": data["id"],
        "state": state.value,
        "status": ARIA2_STATUS[state],
        "url": redact_url(data["url"]),
        "path": data["path"],
        "totalLength": size,
        "completedLength": completed,
        "verifiedLength": min(size, int(data.get("verified") or 0)),
        "percent": round(100.0 * completed / size, 1) if size else 100.0,
        "downloadSpeed": round(speed),
        "eta": round(eta, 1) if eta is not None else None,
        "numPieces": int(data["ranges"]),
        "pieceLength": int(data["chunk_size"]),
        "rangesDone": done,
        "rangesInFlight": inflight,
        "rangesFailed": len(failures),
        "connections": inflight,
        "errorMessage": last_error,
        "workers": sorted(as_str(w) for w in workers),
        "sha256": data.get("sha256"),
        "checksum": data.get("checksum"),
        "retryReason": data.get("retry_reason") if retrying else None,
        "retryIn": round(retry_at - now, 1) if retrying else None,
        "retryAt": retry_at if retrying else None,
    }


ARIA2_STATUS = {
    DownloadState.QUEUED: "waiting",
    DownloadState.RUNNING: "active",
    DownloadState.VERIFYING: "active",
    DownloadState.COMPLETE: "complete",
    DownloadState.FAILED: "error",
    DownloadState.CANCELLED: "removed",
}


def as_str(value: Any) -> str:
    """A Redis reply (bytes, or str on a ``decode_responses`` client) as ``str``."""
    return value.decode() if isinstance(value, bytes) else cast(str, value)
