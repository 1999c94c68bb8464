"""The command-line options the commands share: ``get``'s, the producer's and the worker's.

Each ``*_options`` decorator adds a group of click options; the commands
pass what they receive to ``build_settings``, which puts each in its
settings field (nested groups through ``_NESTED_FLAGS``), and ``-i FILE``
to ``read_entries``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic

from . import batch
from .errors import UsageError
from .settings import Settings

__all__ = [
    "batch_options",
    "build_settings",
    "input_file_option",
    "interface_option",
    "max_time_option",
    "network_options",
    "read_entries",
    "request_options",
    "retry_options",
    "speed_options",
]

F = TypeVar("F", bound=Callable[..., Any])


def request_options(fn: F) -> F:
    """The options that shape one download request, shared by ``get`` and ``enqueue``.

    The command receives ``connections``, ``chunk_size``, ``checksum``,
    ``headers`` and ``limit_rate``.  Three more are settled here, as curl and
    aria2c users mean them: ``-A``/``--user-agent`` becomes a ``User-Agent``
    header (one given with ``-H`` wins, as in curl), ``--continue`` is
    accepted and does nothing (rerunning always resumes), and a bare number
    given to ``-x`` (``--proxy`` for curl) is aria2c's ``-x N``: ``-c N``.
    """

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("resume", None)
        agent = kwargs.pop("user_agent", None)
        headers: tuple[str, ...] = kwargs.get("headers", ())
        if agent is not None and not any(h.partition(":")[0].strip().lower() == "user-agent" for h in headers):
            kwargs["headers"] = (f"User-Agent: {agent}", *headers)
        proxy = kwargs.get("proxy")
        if isinstance(proxy, str) and proxy.isdigit():  # never a proxy: aria2c's connections per server
            if kwargs.get("connections") is not None:
                raise click.UsageError(f"-x {proxy} is aria2c's -c {proxy}: give one of -c and -x")
            kwargs["connections"], kwargs["proxy"] = int(proxy), None
        return fn(*args, **kwargs)

    wrapped: F = command  # type: ignore[assignment]  # functools.wraps keeps fn's signature and click params
    for option in reversed(_REQUEST_OPTIONS):
        wrapped = option(wrapped)
    return wrapped


_REQUEST_OPTIONS = (
    click.option(
        "-c", "--connections", type=int, metavar="N",
        help="Concurrent connections (default 16); aria2c's -x N works too.",
    ),
    click.option("--chunk-size", help="Bytes per range, e.g. 8M (default: chosen from the file size)."),
    click.option("--checksum", help="Verify the result: ALGO=HEX with md5, sha1, sha256 or sha512."),
    click.option("-H", "--header", "headers", multiple=True, help="Extra request header 'Name: value' (repeatable)."),
    click.option(
        "--limit-rate", "--max-download-limit", "limit_rate", metavar="RATE",
        help="At most RATE bytes/s for this download over all its connections, e.g. 500K, 2M "
        "(with Redis: over the whole cluster; default: no limit).",
    ),
    click.option("-A", "--user-agent", "user_agent", metavar="NAME", help="Send this User-Agent header."),
    click.option(
        "--continue", "resume", is_flag=True,
        help="Accepted as in aria2c and wget: resuming is always on (the same command again continues).",
    ),
)  # fmt: skip


def retry_options(fn: F) -> F:
    """Retry and connect timing, shared by ``get`` and ``worker``: ``max_tries``, ``retry_wait``, ``connect_timeout``.

    ``build_settings`` puts them in ``retry`` and ``timeouts``.
    """
    for option in reversed(_RETRY_OPTIONS):
        fn = option(fn)
    return fn


_RETRY_OPTIONS = (
    click.option(
        "--max-tries", type=click.IntRange(min=1), metavar="N",
        help="Tries of a range in a row without progress before it fails (default 8).",
    ),
    click.option(
        "--retry-wait", "--retry-delay", "retry_wait", type=click.FloatRange(min=0), metavar="SECONDS",
        help="Wait before a retry, doubled for each further one up to 30 s or SECONDS (default 0.5; with jitter).",
    ),
    click.option(
        "--connect-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        help="Seconds a connection may take to open (default 15).",
    ),
)  # fmt: skip


def network_options(fn: F) -> F:
    """Proxy and TLS trust options, shared by ``get``, ``enqueue`` and ``worker`` (curl's and aria2c's names)."""
    for option in reversed(_NETWORK_OPTIONS):
        fn = option(fn)
    return fn


_NETWORK_OPTIONS = (
    click.option(
        "-x", "--proxy", "--all-proxy", "proxy",
        help="Use this http:// proxy for every URL (default: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY).",
    ),
    click.option(
        "--noproxy", "--no-proxy", "no_proxy",
        help="Hosts, domains or networks to reach directly, comma-separated; '*' turns proxies off.",
    ),
    click.option(
        "--ca-certificate", "--cacert", "ca_certificate", type=click.Path(path_type=Path, dir_okay=False),
        help="Trust the CA certificates in this PEM file instead of the default ones.",
    ),
    click.option("-k", "--insecure", is_flag=True, default=None, help="Do not verify TLS certificates."),
)  # fmt: skip


def speed_options(fn: F) -> F:
    """The low-speed rule, shared by ``get`` and ``worker`` (curl's names; aria2c's ``--lowest-speed-limit``)."""
    for option in reversed(_SPEED_OPTIONS):
        fn = option(fn)
    return fn


_SPEED_OPTIONS = (
    click.option(
        "-Y", "--speed-limit", "--lowest-speed-limit", "speed_limit", metavar="BYTES",
        help="Re-open a connection slower than this many bytes/s over --speed-time, e.g. 10K (default 1K; 0: off).",
    ),
    click.option(
        "-y", "--speed-time", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        help="Seconds the --speed-limit is averaged over (default 30).",
    ),
)  # fmt: skip

max_time_option = click.option(
    "-m", "--max-time", type=click.FloatRange(min=0), metavar="SECONDS",
    help="Give up after this many seconds in all (default: no limit; 0: none).",
)  # fmt: skip
"""``--max-time``, shared by ``get`` and ``wait``."""

interface_option = click.option(
    "--interface", metavar="ADDR",
    help="Connect from this local IP address (default: RANGEFETCH_INTERFACE, else the system's choice).",
)  # fmt: skip
"""``--interface``, shared by ``get`` and ``worker`` (curl's and aria2c's name); see ``network.check_interface``."""


def batch_options(fn: F) -> F:
    """``get``'s options for many files and for scripts: ``input_file``, ``jobs``, ``dry_run``, ``as_json``,
    ``allow_overwrite`` (aria2c's names: ``-i``, ``-j``, ``--dry-run``, ``--allow-overwrite``)."""
    for option in reversed(_BATCH_OPTIONS):
        fn = option(fn)
    return fn


input_file_option = click.option(
    "-i", "--input-file", metavar="FILE",
    help="Also the URLs in FILE, one a line, each with optional indented out=, dir= and checksum= lines "
    "(aria2c's input file); '-' reads standard input.",
)  # fmt: skip
"""``-i FILE``, shared by ``get`` and ``enqueue`` (``batch.parse_input`` reads it)."""

_BATCH_OPTIONS = (
    input_file_option,
    click.option(
        "-j", "--max-concurrent-downloads", "jobs", type=click.IntRange(min=1), default=batch.DEFAULT_JOBS,
        metavar="N", help=f"Files downloaded at once (default {batch.DEFAULT_JOBS}); they share the -c connections.",
    ),
    click.option(
        "--dry-run", is_flag=True,
        help="Only probe: show size, range support, validator, final URL, output path and plan; create nothing.",
    ),
    click.option(
        "--json", "as_json", is_flag=True,
        help="At the end, one JSON object per file on stdout (path, size, sha256, ...), and nothing else there.",
    ),
    click.option(
        "--allow-overwrite", is_flag=True,
        help="Replace a file already at the output path (default: keep it, and skip it if it is this download).",
    ),
)  # fmt: skip


# Flags that set one field of a nested settings group: flag -> (group, field).
_NESTED_FLAGS = {
    "max_tries": ("retry", "max_tries"),
    "retry_wait": ("retry", "backoff"),
    "connect_timeout": ("timeouts", "connect"),
    "worker_concurrency": ("distributed", "worker_concurrency"),
    "per_host_rate": ("distributed", "per_host_rate"),
}


def build_settings(**overrides: Any) -> Settings:
    """``Settings`` from the environment, overridden by the flags that were given.

    ``max_tries``, ``retry_wait`` and ``connect_timeout`` set ``retry.max_tries``,
    ``retry.backoff`` and ``timeouts.connect``, ``worker_concurrency`` and
    ``per_host_rate`` the ``distributed`` fields; the group's other fields
    keep their values from the environment.

    Raises:
        UsageError: a value is invalid (one line naming it).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    for flag, (group, name) in _NESTED_FLAGS.items():
        if flag in given:
            given.setdefault(group, {})[name] = given.pop(flag)
    try:
        return Settings(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise UsageError(f"invalid {where}: {first['msg']}") from exc


def read_entries(input_file: str | None) -> list[batch.Entry]:
    """The entries of ``-i FILE`` (none without it); ``-`` is standard input.

    Raises:
        UsageError: the file cannot be read, or a line of it is wrong.
    """
    if input_file is None:
        return []
    source = "standard input" if input_file == "-" else input_file
    return batch.parse_input(batch.read_input(input_file), source=source)
