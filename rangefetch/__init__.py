"""rangefetch: fetch one large file over HTTP(S) with many concurrent range requests.

The public API is re-exported here; the modules behind it are named for what
they hold (``plan``, ``probe``, ``fetch``, ``sink``, ``verify``, ...).
"""

# First, before anything heavy is loaded: Ctrl-C while the command starts
# ends it with one line, and httpx is loaded without its own CLI.
from . import _startup  # noqa: F401, I001
from .client import check_url, make_client, parse_header
from .download import DownloadResult, download, download_sync, output_candidates
from .downloader import Downloader
from .errors import (
    CancelledDownloadError,
    ConnectionLostError,
    DownloadError,
    HTTPStatusError,
    MalformedResponseError,
    NoSpaceError,
    OutputExistsError,
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
    TimeLimitError,
    TLSError,
    TooSlowError,
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
from .settings import JobLimits, LowSpeed, RetryPolicy, Settings, Timeouts
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
    "LowSpeed",
    "MalformedResponseError",
    "NoSpaceError",
    "OutputExistsError",
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
    "TimeLimitError",
    "Timeouts",
    "TooSlowError",
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
