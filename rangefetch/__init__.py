"""rangefetch: fetch one large file over HTTP(S) with many concurrent range requests.

The public API is re-exported here; the modules behind it are named for what
they hold (``plan``, ``probe``, ``fetch``, ``sink``, ``verify``, ...).
"""

import os
import signal
import sys
import threading
from types import FrameType


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    """SIGINT before the command line is ready: one line, exit 130 (as 128 + SIGINT)."""
    sys.stderr.write("rangefetch: interrupted\n")
    raise SystemExit(130)


def _quiet_interrupts_while_loading() -> None:
    """When this process is the ``rangefetch`` command, Ctrl-C while it loads ends it with one line.

    Loading the package takes a few tenths of a second (httpx, pydantic),
    and a KeyboardInterrupt raised in an import is printed as a traceback
    before the command has any say.  Until ``cli.run`` starts the event loop
    (it puts Python's handler back: ``_end_quiet_interrupts``), SIGINT exits
    130 with one line instead.  Imported as a library, nothing changes.
    """
    argv = getattr(sys, "orig_argv", sys.argv)
    as_module = "-mrangefetch" in argv or any(a == "-m" and b == "rangefetch" for a, b in zip(argv, argv[1:]))
    as_script = bool(sys.argv) and os.path.basename(sys.argv[0]) == "rangefetch"
    if (as_module or as_script) and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_while_loading)


def _end_quiet_interrupts() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt), for the command's own handling."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_quiet_interrupts_while_loading()

# httpx imports its own command line (click, rich and pygments: ~50 ms of CPU
# per process, a sixth of rangefetch's start-up) whenever those are
# installed, and rangefetch never uses it.  Unless httpx is already loaded,
# it takes its no-CLI path here: ``httpx.main()`` then says to install httpx[cli].
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from .client import check_url, make_client, parse_header  # noqa: E402
from .download import DownloadResult, download, download_sync, output_candidates
from .downloader import Downloader
from .errors import (
    CancelledDownloadError,
    ConnectionLostError,
    DownloadError,
    HTTPStatusError,
    MalformedResponseError,
    NoSpaceError,
    PermanentError,
    ProtocolError,
    ProxyError,
    QueueError,
    RangefetchError,
    RemoteChangedError,
    RetriesExhaustedError,
    ServerBusyError,
    StallError,
    StateError,
    TLSError,
    TransientError,
    UnknownSizeError,
    UnreachableError,
    UnsafePathError,
    UsageError,
    VerificationError,
)
from .fetch import Writer, fetch_range, fetch_stream
from .names import resolve_output
from .network import Trust, proxy_for, ssl_context
from .plan import Range, choose_chunk_size, parse_size, plan_ranges
from .probe import RemoteFile, probe
from .progress import Tracker
from .redact import redact_headers, redact_url
from .retry import Backoff
from .settings import JobLimits, RetryPolicy, Settings, Timeouts
from .sink import FileWriter, PartFile, allocate
from .verify import Checksum, hash_fd

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CancelledDownloadError",
    "Checksum",
    "ConnectionLostError",
    "DownloadError",
    "DownloadResult",
    "Downloader",
    "FileWriter",
    "HTTPStatusError",
    "JobLimits",
    "MalformedResponseError",
    "NoSpaceError",
    "PartFile",
    "PermanentError",
    "ProtocolError",
    "ProxyError",
    "QueueError",
    "Range",
    "RangefetchError",
    "RemoteChangedError",
    "RemoteFile",
    "RetriesExhaustedError",
    "RetryPolicy",
    "ServerBusyError",
    "Settings",
    "StallError",
    "StateError",
    "TLSError",
    "Timeouts",
    "Tracker",
    "TransientError",
    "Trust",
    "UnknownSizeError",
    "UnreachableError",
    "UnsafePathError",
    "UsageError",
    "VerificationError",
    "Writer",
    "allocate",
    "check_url",
    "choose_chunk_size",
    "download",
    "download_sync",
    "fetch_range",
    "fetch_stream",
    "hash_fd",
    "make_client",
    "output_candidates",
    "parse_header",
    "parse_size",
    "plan_ranges",
    "probe",
    "proxy_for",
    "redact_headers",
    "redact_url",
    "resolve_output",
    "ssl_context",
]
