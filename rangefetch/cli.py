"""The core's ``rangefetch`` command group: parse arguments, build settings, call the library.

The producer's and worker's commands, and ``get --redis``, are not named
here: the program (``rangefetch.program``) hands them in as ``Extensions``,
by import path, so the core never imports the distributed layer.  The
options ``get`` shares with those commands are in ``options.py``, and how a
command runs (logging, exit codes) in ``runner.py``.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import batch, dryrun
from .client import parse_header
from .errors import UsageError
from .options import (
    batch_options,
    build_settings,
    interface_option,
    max_time_option,
    network_options,
    read_entries,
    request_options,
    retry_options,
    speed_options,
)
from .runner import EXIT_INTERRUPTED, run, setup_logging
from .settings import Settings
from .verify import Checksum

__all__ = ["Extensions", "main"]


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
