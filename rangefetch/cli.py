"""The ``rangefetch`` command: parse arguments, build settings, call the library.

Commands from the producer and worker packages plug in through the
``rangefetch.commands`` entry point group, so the core never imports them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic

from ._startup import end_quiet_interrupts
from .client import parse_header
from .display import show_progress
from .download import download
from .errors import RangefetchError, UsageError
from .progress import Tracker
from .settings import Settings
from .verify import Checksum

__all__ = [
    "build_settings",
    "main",
    "max_time_option",
    "network_options",
    "request_options",
    "run",
    "setup_logging",
    "speed_options",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130
LOG_FORMAT = "rangefetch: %(message)s"


def build_settings(**overrides: Any) -> Settings:
    """``Settings`` from the environment, overridden by the flags that were given.

    Raises:
        UsageError: a value is invalid (one line naming it).
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
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


class _Group(click.Group):
    """Adds the commands other packages register, and one-line usage errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(ep.name for ep in entry_points(group="rangefetch.commands"))})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            for ep in entry_points(group="rangefetch.commands", name=name):
                loaded = ep.load()
                return loaded if isinstance(loaded, click.Command) else None
        return command


def request_options(fn: F) -> F:
    """The options that shape one download request, shared by ``get`` and ``enqueue``."""
    for option in reversed(_REQUEST_OPTIONS):
        fn = option(fn)
    return fn


_REQUEST_OPTIONS = (
    click.option("-c", "--connections", type=int, help="Concurrent connections (default 16)."),
    click.option("--chunk-size", help="Bytes per range, e.g. 8M (default: chosen from the file size)."),
    click.option("--checksum", help="Verify the result: ALGO=HEX with md5, sha1, sha256 or sha512."),
    click.option("-H", "--header", "headers", multiple=True, help="Extra request header 'Name: value' (repeatable)."),
)


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rangefetch")
def cli() -> None:
    """Fetch one large file over HTTP(S) with many concurrent range requests."""


@cli.command()
@click.argument("url")
# A str, as given: a Path would drop the "/" of "-o newdir/", which names a directory.
@click.option("-o", "--output", type=click.Path(), help="Write to this file.")
@click.option(
    "-d", "--dir", "directory", type=click.Path(path_type=Path), help="Save in this directory, named by the server."
)
@request_options
@network_options
@speed_options
@max_time_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--redis", "redis_url", help="Run distributed through this Redis (default: RANGEFETCH_REDIS_URL).")
def get(
    url: str,
    output: str | None,
    directory: Path | None,
    connections: int | None,
    chunk_size: str | None,
    checksum: str | None,
    headers: tuple[str, ...],
    proxy: str | None,
    no_proxy: str | None,
    ca_certificate: Path | None,
    insecure: bool | None,
    speed_limit: str | None,
    speed_time: float | None,
    max_time: float | None,
    quiet: bool,
    verbose: int,
    redis_url: str | None,
) -> None:
    """Download URL, verify it, and print its sha256.

    Embedded (one process) unless Redis is configured: then the ranges are
    enqueued for the workers and this command follows them like `wait`.
    A connection slower than --speed-limit over --speed-time is re-opened
    from its last byte (the workers' own rule applies with --redis).  After
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
            speed_limit=speed_limit, speed_time=speed_time, max_time=max_time,
        )  # fmt: skip
        expected = Checksum.parse(checksum) if checksum else None
        extra = dict(parse_header(h) for h in headers)
        if settings.redis_url and (speed_limit is not None or speed_time is not None):
            raise UsageError("with --redis the workers fetch: give --speed-limit and --speed-time to the workers")
        if settings.redis_url:
            distributed = _plugin("distributed-get")
            code = await distributed(
                url, output=output, directory=directory, settings=settings,
                headers=extra, checksum=expected, quiet=quiet,
            )  # fmt: skip
            if code:
                sys.exit(code)
            return
        tracker = Tracker()
        async with show_progress(tracker, "rangefetch", quiet=quiet):
            result = await download(
                url,
                output,
                directory=directory if directory is not None else Path("."),  # resolved (and checked) by download
                settings=settings,
                headers=extra,
                checksum=expected,
                tracker=tracker,
            )
        click.echo(f"{result.sha256}  {result.path}")

    run(main)


def _plugin(name: str) -> Any:
    """The callable another package registers under ``rangefetch.modes``.

    Raises:
        UsageError: no package provides it (the distributed mode is not installed).
    """
    for ep in entry_points(group="rangefetch.modes", name=name):
        return ep.load()
    raise UsageError(f"{name} is not available: install rangefetch with its producer package")


def main() -> None:
    """Console entry point: click's own usage errors become one line too."""
    try:
        cli.main(prog_name="rangefetch", standalone_mode=False)
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
