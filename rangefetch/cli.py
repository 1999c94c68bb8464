"""The core's ``rangefetch`` command group: parse arguments, build settings, call the library.

The producer's and worker's commands, and ``get --redis``, are not named
here: the program (``rangefetch.program``) hands them in as ``Extensions``,
by import path, so the core never imports the distributed layer.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic

from . import batch, dryrun
from ._startup import end_quiet_interrupts
from .client import parse_header
from .errors import RangefetchError, UsageError
from .settings import Settings
from .verify import Checksum

__all__ = [
    "Extensions",
    "batch_options",
    "build_settings",
    "input_file_option",
    "interface_option",
    "main",
    "max_time_option",
    "network_options",
    "read_entries",
    "request_options",
    "retry_options",
    "run",
    "setup_logging",
    "speed_options",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130
LOG_FORMAT = "rangefetch: %(message)s"


# Flags that set one field of a nested settings group: flag -> (group, field).
_NESTED_FLAGS = {
    "max_tries": ("retry", "max_tries"),
    "retry_wait": ("retry", "backoff"),
    "connect_timeout": ("timeouts", "connect"),
}


def build_settings(**overrides: Any) -> Settings:
    """``Settings`` from the environment, overridden by the flags that were given.

    ``max_tries``, ``retry_wait`` and ``connect_timeout`` set ``retry.max_tries``,
    ``retry.backoff`` and ``timeouts.connect``; the group's other fields keep
    their values from the environment.

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


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning our errors into a one-line message and an exit code."""
    # Until here a Ctrl-C ended the command with one line (rangefetch/__init__.py);
    # from here on it cancels the coroutine, which cleans up, and ends below.
    end_quiet_interrupts()
    try:
        return asyncio.run(coro_fn())
    except RangefetchError as exc:
        click.echo(f"rangefetch: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("rangefetch: interrupted; run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


def setup_logging(verbose: int, quiet: bool = False, *, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr: warnings, or info with ``verbose`` 1 and debug with 2; only errors when ``quiet``.

    httpx and httpcore stay at warnings whatever the level: httpx logs every
    request URL, and URLs may carry secrets.
    """
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Extensions:
    """What the program adds to the core's commands, each as ``"module:attribute"``.

    ``commands`` maps a command name to a click command; ``distributed_get``
    is the coroutine function ``get --redis`` runs.  Each is imported on
    first use, so ``rangefetch get`` never imports arq.
    """

    commands: Mapping[str, str] = field(default_factory=dict)
    distributed_get: str | None = None


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Group(click.Group):
    """Adds the commands of the ``Extensions`` in the context, and one-line usage errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        extensions = ctx.find_object(Extensions) or Extensions()
        return sorted({*super().list_commands(ctx), *extensions.commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        extensions = ctx.find_object(Extensions) or Extensions()
        if command is None and name in extensions.commands:
            loaded = _load(extensions.commands[name])
            return loaded if isinstance(loaded, click.Command) else None
        return command


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rangefetch")
def cli() -> None:
    """Fetch one large file over HTTP(S) with many concurrent range requests."""


@cli.command()
@click.argument("urls", nargs=-1, metavar="URL...")
# A str, as given: a Path would drop the "/" of "-o newdir/", which names a directory.
@click.option("-o", "--output", type=click.Path(), help="Write to this file.")
@click.option(
    "-d", "--dir", "directory", type=click.Path(path_type=Path), help="Save in this directory, named by the server."
)
@batch_options
@request_options
@network_options
@speed_options
@retry_options
@max_time_option
@interface_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--redis", "redis_url", help="Run distributed through this Redis (default: RANGEFETCH_REDIS_URL).")
def get(
    urls: tuple[str, ...],
    output: str | None,
    directory: Path | None,
    input_file: str | None,
    jobs: int,
    dry_run: bool,
    as_json: bool,
    allow_overwrite: bool,
    connections: int | None,
    chunk_size: str | None,
    checksum: str | None,
    headers: tuple[str, ...],
    limit_rate: str | None,
    proxy: str | None,
    no_proxy: str | None,
    ca_certificate: Path | None,
    insecure: bool | None,
    speed_limit: str | None,
    speed_time: float | None,
    max_tries: int | None,
    retry_wait: float | None,
    connect_timeout: float | None,
    max_time: float | None,
    interface: str | None,
    quiet: bool,
    verbose: int,
    redis_url: str | None,
) -> None:
    """Download each URL, verify it, and print its sha256.

    Several files (URLs, -i FILE) run -j at a time and share the -c
    connections; the exit code is 0 only when every file succeeded.  A file
    already at the output path is kept (--allow-overwrite replaces it) and
    skipped when it is this download, finished.

    Embedded (one process) unless Redis is configured: then the ranges are
    enqueued for the workers and this command follows them like `wait`.
    A connection slower than --speed-limit over --speed-time is re-opened
    from its last byte (the workers' own rule applies with --redis), and
    --limit-rate caps the download's bytes per second.  After
    --max-time seconds it gives up: embedded, the .part file and its record
    stay for a rerun to resume; with --redis, the download continues on the
    workers.
    """
    setup_logging(verbose, quiet)

    async def main() -> None:
        if output is not None and directory is not None:
            raise UsageError("use either -o PATH or -d DIR, not both")
        settings = build_settings(
            connections=connections, chunk_size=chunk_size, redis_url=redis_url,
            proxy=proxy, no_proxy=no_proxy, ca_certificate=ca_certificate, insecure=insecure,
            speed_limit=speed_limit, speed_time=speed_time, max_time=max_time, interface=interface,
            limit_rate=limit_rate, max_tries=max_tries, retry_wait=retry_wait, connect_timeout=connect_timeout,
        )  # fmt: skip
        expected = Checksum.parse(checksum) if checksum else None
        extra = dict(parse_header(h) for h in headers)
        files = batch.collect(
            urls, read_entries(input_file), output=output, directory=str(directory) if directory else None,
            checksum=expected,
        )  # fmt: skip
        if settings.redis_url and (speed_limit is not None or speed_time is not None):
            raise UsageError("with --redis the workers fetch: give --speed-limit and --speed-time to the workers")
        retrying = {"--max-tries": max_tries, "--retry-wait": retry_wait, "--connect-timeout": connect_timeout}
        if settings.redis_url and (given := [flag for flag, value in retrying.items() if value is not None]):
            raise UsageError(f"with --redis the workers fetch: give {', '.join(given)} to the workers")
        if settings.redis_url:
            _distributable(files, dry_run=dry_run, as_json=as_json, allow_overwrite=allow_overwrite)
            distributed = _distributed_get()
            code = await distributed(
                files[0].url, output=files[0].output, directory=files[0].directory, settings=settings,
                headers=extra, checksum=files[0].checksum, quiet=quiet,
            )  # fmt: skip
        else:
            code = await _get_files(
                files, settings=settings, headers=extra, jobs=jobs,
                dry_run=dry_run, as_json=as_json, allow_overwrite=allow_overwrite, quiet=quiet,
            )  # fmt: skip
        if code:
            sys.exit(code)

    run(main)


def read_entries(input_file: str | None) -> list[batch.Entry]:
    """The entries of ``-i FILE`` (none without it); ``-`` is standard input.

    Raises:
        UsageError: the file cannot be read, or a line of it is wrong.
    """
    if input_file is None:
        return []
    source = "standard input" if input_file == "-" else input_file
    return batch.parse_input(batch.read_input(input_file), source=source)


def _distributable(files: list[batch.Entry], *, dry_run: bool, as_json: bool, allow_overwrite: bool) -> None:
    """Refuse what ``get --redis`` cannot do yet.

    Raises:
        UsageError: several files, ``--dry-run``, ``--json`` or ``--allow-overwrite``.
    """
    if len(files) > 1:
        raise UsageError("with --redis, get takes one URL: `rangefetch enqueue -i FILE` queues several")
    for flag, given in (("--dry-run", dry_run), ("--json", as_json), ("--allow-overwrite", allow_overwrite)):
        if given:
            raise UsageError(f"{flag} does not work with --redis yet")


async def _get_files(
    files: list[batch.Entry],
    *,
    settings: Settings,
    headers: dict[str, str],
    jobs: int,
    dry_run: bool,
    as_json: bool,
    allow_overwrite: bool,
    quiet: bool,
) -> int:
    """Embedded ``get``: fetch (or ``--dry-run``) ``files``, print a result per file on stdout; the exit code.

    Raises:
        RangefetchError: the one file given failed (its own message and exit code).
    """
    if dry_run:
        previews = await dryrun.dry_run(files, settings=settings, headers=headers, allow_overwrite=allow_overwrite)
        shown = [json.dumps(p.summary()) if as_json else dryrun.format_preview(p) for p in previews]
        click.echo(("\n" if as_json else "\n\n").join(shown))
        failed = [p.error for p in previews if p.error is not None]
    else:
        outcomes = await batch.run_batch(
            files, settings=settings, headers=headers, jobs=jobs, allow_overwrite=allow_overwrite, quiet=quiet
        )
        for outcome in outcomes:
            if as_json:
                click.echo(json.dumps(outcome.summary()))
            elif outcome.result is not None:
                click.echo(f"{outcome.result.sha256}  {outcome.result.path}")
        failed = [o.error for o in outcomes if o.error is not None]
    if not failed:
        return 0
    if len(files) == 1:
        raise failed[0]
    click.echo(f"rangefetch: error: {len(failed)} of {len(files)} files failed", err=True)
    return 1


def _distributed_get() -> Any:
    """``get --redis``'s coroutine function, from the program's ``Extensions``.

    Raises:
        UsageError: the program has none (the distributed layer is not part of it).
    """
    extensions = click.get_current_context().find_object(Extensions)
    if extensions is None or extensions.distributed_get is None:
        raise UsageError("get --redis is not available: this program has no distributed mode")
    return _load(extensions.distributed_get)


def main(extensions: Extensions | None = None) -> None:
    """Run the command group with ``extensions``: click's own usage errors become one line too."""
    try:
        cli.main(prog_name="rangefetch", standalone_mode=False, obj=extensions)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        click.echo(f"rangefetch: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"rangefetch: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("rangefetch: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
