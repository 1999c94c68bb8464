"""The life of a distributed download, as an enum with its legal transitions."""

from __future__ import annotations

import enum

from ..errors import StateError

__all__ = ["DownloadState"]


class DownloadState(enum.StrEnum):
    """Where a distributed download is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    VERIFYING = "verifying"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether nothing more will happen without a new ``enqueue``."""
        return self in (DownloadState.COMPLETE, DownloadState.FAILED, DownloadState.CANCELLED)

    def can_become(self, new: DownloadState) -> bool:
        """Whether ``self -> new`` is a legal transition."""
        return new in _TRANSITIONS[self]

    def check(self, new: DownloadState) -> None:
        """Raise ``StateError`` unless ``self -> new`` is legal."""
        if not self.can_become(new):
            raise StateError(f"a {self.value} download cannot become {new.value}")


S = DownloadState
_TRANSITIONS: dict[DownloadState, frozenset[DownloadState]] = {
    S.QUEUED: frozenset({S.QUEUED, S.RUNNING, S.VERIFYING, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.RUNNING, S.VERIFYING, S.FAILED, S.CANCELLED}),
    # Verification can send ranges back to be fetched again.
    S.VERIFYING: frozenset({S.RUNNING, S.COMPLETE, S.FAILED, S.CANCELLED}),
    # Enqueuing again resumes a failed or cancelled download.
    S.FAILED: frozenset({S.QUEUED, S.FAILED}),
    S.CANCELLED: frozenset({S.QUEUED, S.CANCELLED}),
    S.COMPLETE: frozenset({S.QUEUED}),
}
