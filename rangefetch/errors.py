"""The one exception tree of rangefetch.

Every error a user can see is a ``RangefetchError`` with a one-line message.
Errors from httpx, redis and the operating system are translated at the
boundary (``raise ... from exc``) so callers only ever catch ours::

    RangefetchError                 url, range attributes; str() is one line
    ├── UsageError                  bad input: URL, scheme, flag, path (exit 2)
    │   └── UnsafePathError         an output path outside the download directory
    ├── DownloadError               the download failed (exit 1)
    │   ├── TransientError          worth retrying: drops, stalls, 5xx, 429
    │   │   ├── ConnectionLostError the connection broke or could not be made
    │   │   │   └── UnreachableError no connection at all: refused, no such host
    │   │   │       └── ProxyError  the proxy could not be reached or refused the tunnel
    │   │   ├── StallError          no bytes arrived for the stall timeout
    │   │   ├── TooSlowError        fewer than speed_limit bytes/s for speed_time seconds
    │   │   └── ServerBusyError     5xx or 429, maybe with Retry-After
    │   ├── PermanentError          retrying cannot help
    │   │   ├── HTTPStatusError     404, 410, 401, 403 and other final statuses
    │   │   ├── ProtocolError       a response that breaks the Range rules
    │   │   │   └── MalformedResponseError a reply that breaks HTTP/1.1 itself
    │   │   ├── TLSError            certificate, host name or TLS version refused
    │   │   ├── RemoteChangedError  the remote file changed under us
    │   │   └── UnknownSizeError    the server does not say how large the file is
    │   ├── RetriesExhaustedError   a transient error that kept coming back
    │   ├── TimeLimitError          the download did not end within --max-time
    │   ├── VerificationError       size or checksum of the result is wrong
    │   ├── NoSpaceError            the file system has too little room for the file
    │   ├── OutputExistsError       another file is at the output path, and is not replaced
    │   └── CancelledDownloadError  the download was cancelled
    ├── StateError                  an illegal state transition
    └── QueueError                  Redis could not be reached or answered badly
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .plan import Range

__all__ = [
    "CancelledDownloadError",
    "ConnectionLostError",
    "DownloadError",
    "HTTPStatusError",
    "MalformedResponseError",
    "NoSpaceError",
    "OutputExistsError",
    "PermanentError",
    "ProtocolError",
    "QueueError",
    "RangefetchError",
    "RemoteChangedError",
    "RetriesExhaustedError",
    "ProxyError",
    "ServerBusyError",
    "StallError",
    "StateError",
    "TLSError",
    "TimeLimitError",
    "TooSlowError",
    "TransientError",
    "UnknownSizeError",
    "UnreachableError",
    "UnsafePathError",
    "UsageError",
    "VerificationError",
    "collapse",
]

E = TypeVar("E", bound=BaseException)


class RangefetchError(Exception):
    """Base of every error rangefetch raises."""

    exit_code = 1

    def __init__(self, message: str, *, url: str | None = None, range: Range | None = None) -> None:
        # One line, always: the CLI prints str(exc) as the whole error report.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message = message
        self.url = url
        self.range = range

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # arq pickles the errors range jobs raise.  The default reduce calls
        # ``cls(message)``, which fails for errors with keyword-only required
        # arguments (``status``); rebuild from the attributes instead.
        return (_rebuild, (type(self), self.message), self.__dict__)


def _rebuild(cls: type[RangefetchError], message: str) -> RangefetchError:
    return cls.__new__(cls, message)


class UsageError(RangefetchError):
    """The request itself is wrong: a bad URL, scheme, flag or path."""

    exit_code = 2


class UnsafePathError(UsageError):
    """An output path that would land outside the download directory."""


class DownloadError(RangefetchError):
    """The download failed."""


class TransientError(DownloadError):
    """A failure that may go away if the request is tried again."""

    retry_after: float | None = None
    # A few words for a progress display, "retrying in 4 s (HTTP 503)": each
    # subclass has its own, and an instance may carry a sharper one
    # ("connection refused").
    reason = "failed"


class ConnectionLostError(TransientError):
    """The connection broke, or could not be opened."""

    reason = "connection lost"


# Transient during a download (a restarting server), but the probe gives up
# on it almost at once: nothing is listening, and retrying for a minute only
# delays the answer (curl and aria2c fail in milliseconds).
class UnreachableError(ConnectionLostError):
    """No connection could be opened: refused, no such host, no route."""

    reason = "cannot connect"


class ProxyError(UnreachableError):
    """The proxy could not be reached, or it refused to forward the request."""

    reason = "proxy unreachable"


class StallError(TransientError):
    """No bytes arrived for longer than the stall timeout."""

    reason = "stalled"


class TooSlowError(TransientError):
    """Fewer than ``speed_limit`` bytes a second arrived over ``speed_time`` seconds (the low-speed rule)."""

    reason = "too slow"


class ServerBusyError(TransientError):
    """The server answered 5xx or 429; ``retry_after`` holds its Retry-After in seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: float | None = None,
        url: str | None = None,
        range: Range | None = None,
    ) -> None:
        super().__init__(message, url=url, range=range)
        self.status = status
        self.retry_after = retry_after
        self.reason = f"HTTP {status}"


class PermanentError(DownloadError):
    """A failure that retrying cannot fix."""


class HTTPStatusError(PermanentError):
    """The server answered with a final error status such as 404 or 403."""

    def __init__(self, message: str, *, status: int, url: str | None = None, range: Range | None = None) -> None:
        super().__init__(message, url=url, range=range)
        self.status = status


class ProtocolError(PermanentError):
    """A response broke the Range rules: wrong Content-Range, short or long body."""


class MalformedResponseError(ProtocolError):
    """The reply broke HTTP/1.1 itself: a bad status line or header field, conflicting lengths, too many headers."""


class TLSError(PermanentError):
    """The TLS handshake failed: an untrusted certificate, a wrong host name, or no common TLS version."""


class RemoteChangedError(PermanentError):
    """The remote file changed (ETag, Last-Modified or size) during or since the download."""


class UnknownSizeError(PermanentError):
    """The server does not say how large the file is."""


class RetriesExhaustedError(DownloadError):
    """A transient failure kept coming back until the retry budget ran out."""


class TimeLimitError(DownloadError):
    """The download (or the wait for it) did not end within ``max_time`` seconds."""


class VerificationError(DownloadError):
    """The finished file has the wrong size or checksum."""


class NoSpaceError(DownloadError):
    """The file system has too little free space for the file."""


class OutputExistsError(DownloadError):
    """A file rangefetch cannot tell is this download is at the output path, and replacing it was not allowed."""


class CancelledDownloadError(DownloadError):
    """The download was cancelled."""


class StateError(RangefetchError):
    """An illegal state transition was requested."""


class QueueError(RangefetchError):
    """Redis could not be reached, or answered in a way we cannot use."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside ``exc``, however deeply its exception groups nest (``exc`` itself if not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error to raise for a task group's failures.

    When every failure is ours, the most telling one is returned (permanent
    before transient), its message noting how many others failed; raise it
    ``from group`` so nothing is lost.  Anything else (a bug) returns the
    group itself, to be raised with full tracebacks.
    """
    found = leaves(group)
    ours = [e for e in found if isinstance(e, RangefetchError)]
    if not ours or len(ours) != len(found):
        return group
    primary = next((e for e in ours if isinstance(e, PermanentError | VerificationError)), ours[0])
    if len(ours) > 1:
        primary.message = f"{primary.message} (and {len(ours) - 1} more failures)"
    return primary


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or during (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def cause_of(error: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` among ``causes(error)``, or ``None``."""
    return next((exc for exc in causes(error) if isinstance(exc, kind)), None)
