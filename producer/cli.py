"""The producer's commands: ``enqueue``, ``status``, ``wait``, ``cancel``, ``workers``, and ``get --redis``.

The program (``rangefetch.program``) names them to the core's command group,
which imports this module on first use.  Each parses its arguments, builds ``Settings``
once, opens Redis and calls the library in ``enqueue``, ``monitor`` and
``watch``; ``rangefetch.runner.run`` turns errors into one line and an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from arq.connections import ArqRedis

from rangefetch import Checksum, QueueError, Settings, TimeLimitError, Tracker, hash_fd, parse_header
from rangefetch.batch import Entry, collect
from rangefetch.display import show_progress
from rangefetch.distributed.connections import open_redis
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store
from rangefetch.errors import RangefetchError, UsageError
from rangefetch.options import (
    build_settings,
    input_file_option,
    max_time_option,
    network_options,
    read_entries,
    request_options,
)
from rangefetch.runner import run, setup_logging

from .enqueue import Enqueued, resolve_target
from .enqueue import enqueue as enqueue_download
from .monitor import cancel as cancel_download
from .monitor import follow, format_status, format_workers, outcome, statuses, tracking, worker_record
from .watch import watch

__all__ = ["cancel", "distributed_get", "enqueue", "status", "wait", "workers"]

F = TypeVar("F", bound=Callable[..., Any])

_redis_option = click.option(
    "--redis", "redis_url", help="Redis URL, e.g. redis://:password@host:6379/0 (default: RANGEFETCH_REDIS_URL)."
)
_verbose_option = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")


def _common(fn: F) -> F:
    return _redis_option(_verbose_option(fn))


@contextlib.asynccontextmanager
async def _connect(settings: Settings, *, patient: bool = False) -> AsyncIterator[ArqRedis]:
    """Redis for one command (``rangefetch.distributed.connections.open_redis``).

    Every command fails within seconds, in one line, when Redis cannot be
    reached or refuses the password at first contact.  ``wait``,
    ``get --redis`` and ``status --watch`` follow downloads for a long time
    and are ``patient``: once connected they ride out a Redis restart.  The
    others give up after a short outage.
    """
    redis = await open_redis(settings, patient=patient)
    try:
        yield redis
    finally:
        await redis.aclose()


@click.command()
@click.argument("urls", nargs=-1, metavar="URL...")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File to write, inside the download directory.")
@click.option("-d", "--dir", "directory", type=click.Path(path_type=Path), help="Folder inside the download directory.")
@input_file_option
@request_options
@network_options
@_common
def enqueue(
    urls: tuple[str, ...],
    output: Path | None,
    directory: Path | None,
    input_file: str | None,
    connections: int | None,
    chunk_size: str | None,
    checksum: str | None,
    headers: tuple[str, ...],
    limit_rate: str | None,
    proxy: str | None,
    no_proxy: str | None,
    ca_certificate: Path | None,
    insecure: bool | None,
    redis_url: str | None,
    verbose: int,
) -> None:
    """Queue each URL for the workers and print its download id, one a line.

    Enqueuing the same URL to the same output again prints the same id and
    only queues what is missing: it resumes a failed or cancelled download.
    With several files, one that cannot be queued is reported and the others
    are queued (exit 1).
    The probe goes through this host's proxies; --ca-certificate and
    --insecure are stored with the download, for every worker to verify
    the server with.
    """
    setup_logging(verbose)

    async def main() -> None:
        settings = build_settings(
            connections=connections, chunk_size=chunk_size, redis_url=redis_url, limit_rate=limit_rate,
            proxy=proxy, no_proxy=no_proxy, ca_certificate=ca_certificate, insecure=insecure,
        )  # fmt: skip
        expected = Checksum.parse(checksum) if checksum else None
        extra = dict(parse_header(h) for h in headers)
        files = collect(
            urls, read_entries(input_file), output=str(output) if output else None,
            directory=str(directory) if directory else None, checksum=expected,
        )  # fmt: skip
        targets = [_target(settings, entry) for entry in files]  # every path checked before any request
        failed = 0
        async with _connect(settings) as redis:
            for entry, (path, folder) in zip(files, targets, strict=True):
                try:
                    result = await enqueue_download(
                        entry.url, settings=settings, redis=redis, output=path, directory=folder,
                        headers=extra, checksum=entry.checksum,
                    )  # fmt: skip
                except RangefetchError as exc:
                    if len(files) == 1 or isinstance(exc, QueueError):
                        raise
                    click.echo(f"rangefetch: error: {entry.label}: {exc}", err=True)
                    failed += 1
                    continue
                if _complete(result):
                    click.echo(f"rangefetch: {result.path} is already complete (download {result.id})", err=True)
                click.echo(result.id)
        if failed:
            click.echo(f"rangefetch: error: {failed} of {len(files)} files were not queued", err=True)
            sys.exit(1)

    run(main)


def _target(settings: Settings, entry: Entry) -> tuple[str | None, str | None]:
    """``enqueue``'s ``output`` and ``directory`` for ``entry`` (``dir=`` and ``out=`` together are one path).

    Raises:
        UsageError: the path lies outside the download directory or can never work, naming the entry.
    """
    path, folder = entry.output, entry.directory
    if path is not None and folder is not None:
        path, folder = str(Path(folder) / path), None
    try:
        resolve_target(settings.download_dir, None, output=path, directory=folder)
    except UsageError as exc:
        raise entry.explain(exc) from exc
    return path, folder


@click.command()
@click.argument("download_ids", nargs=-1, metavar="[ID]...")
@click.option("--watch", "live", is_flag=True, help="Show live progress until the downloads end.")
@click.option("--json", "as_json", is_flag=True, help="JSON with aria2 tellStatus field names.")
@_common
def status(download_ids: tuple[str, ...], live: bool, as_json: bool, redis_url: str | None, verbose: int) -> None:
    """Show the state and progress of the downloads IDs (say, what `enqueue -i` printed), or of all of them.

    With --json: one object for one ID, a list otherwise.
    """
    setup_logging(verbose)

    async def main() -> None:
        settings = build_settings(redis_url=redis_url)
        ids = list(dict.fromkeys(download_ids))
        async with _connect(settings, patient=live) as redis:
            store = Store(redis)
            if live:
                if not await watch(store, ids, stream=sys.stdout, as_json=as_json) and not as_json:
                    click.echo("no downloads")
                return
            records = await statuses(store, ids)
        if as_json:
            click.echo(json.dumps(records[0] if len(ids) == 1 else records, sort_keys=True, indent=2))
        elif records:
            click.echo("\n".join(format_status(r) for r in records))
        else:
            click.echo("no downloads")

    run(main)


@click.command()
@click.argument("download_id")
@max_time_option
@_common
def wait(download_id: str, max_time: float | None, redis_url: str | None, verbose: int) -> None:
    """Block until a download ends: exit 0 when complete, 1 when failed or cancelled.

    On a terminal it shows the download's progress bar meanwhile.

    With --max-time it stops waiting after that many seconds (exit 1); the
    download continues on the workers.
    """
    setup_logging(verbose)

    async def main() -> None:
        settings = build_settings(redis_url=redis_url, max_time=max_time)
        async with _max_time(settings.max_time, lambda: download_id), _connect(settings, patient=True) as redis:
            tracker = Tracker()
            async with show_progress(tracker, download_id, quiet=not sys.stderr.isatty()):  # a bar on a terminal
                record = await follow(Store(redis), download_id, on_status=tracking(tracker))
        outcome(record)
        path = settings.download_dir.resolve() / record["path"]
        click.echo(f"{record['sha256'] or await _sha256(path)}  {path}")

    run(main)


@click.command()
@click.argument("download_id")
@_common
def cancel(download_id: str, redis_url: str | None, verbose: int) -> None:
    """Stop a download; its .part file stays, so enqueuing it again resumes."""
    setup_logging(verbose)

    async def main() -> None:
        settings = build_settings(redis_url=redis_url)
        async with _connect(settings) as redis:
            removed = await cancel_download(Store(redis), redis, settings, download_id)
        click.echo(f"cancelled {download_id}: {removed} queued jobs removed", err=True)

    run(main)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@_common
def workers(as_json: bool, redis_url: str | None, verbose: int) -> None:
    """List the live workers: host, pid, jobs running, last heartbeat."""
    setup_logging(verbose)

    async def main() -> None:
        settings = build_settings(redis_url=redis_url)
        async with _connect(settings) as redis:
            found = await Store(redis).workers()
        if as_json:
            click.echo(json.dumps([worker_record(w) for w in found], sort_keys=True, indent=2))
        else:
            click.echo(format_workers(found))

    run(main)


async def distributed_get(
    url: str,
    *,
    output: str | os.PathLike[str] | None,
    directory: str | os.PathLike[str] | None,
    settings: Settings,
    headers: dict[str, str],
    checksum: Checksum | None,
    quiet: bool,
) -> int:
    """``rangefetch get --redis``: enqueue, follow the progress, and exit like ``wait``.

    Prints ``<sha256>  <path>`` on success and returns the exit code.  The
    progress display shows the workers' retry waits ("retrying in 4 s (HTTP
    503)", ``Store.note_retry``).

    Raises:
        RangefetchError: enqueuing failed (bad URL or path, probe, Redis).
        TimeLimitError: ``settings.max_time`` ran out (the download continues).
    """
    queued: list[str] = []
    async with _max_time(settings.max_time, lambda: queued[0] if queued else None):
        async with _connect(settings, patient=True) as redis:
            result = await enqueue_download(
                url, settings=settings, redis=redis, output=output, directory=directory,
                headers=headers, checksum=checksum,
            )  # fmt: skip
            queued.append(result.id)
            complete = _complete(result)
            if not quiet:
                click.echo(f"rangefetch: {_enqueued(result)}", err=True)
            tracker = Tracker()
            async with show_progress(tracker, "rangefetch", quiet=quiet or complete):
                record = await follow(Store(redis), result.id, on_status=tracking(tracker))
    try:
        outcome(record)
    except RangefetchError as exc:
        click.echo(f"rangefetch: error: {exc}", err=True)
        return exc.exit_code
    digest = record["sha256"] or await _sha256(result.path)
    click.echo(f"{digest}  {result.path}")
    return 0


def _complete(result: Enqueued) -> bool:
    """Whether ``result`` is a download that was already complete: nothing was queued."""
    return result.state is DownloadState.COMPLETE and result.added == 0


def _enqueued(result: Enqueued) -> str:
    """What ``get --redis`` says it did: queued jobs, joined a download under way, or found it complete."""
    if _complete(result):
        return f"{result.path} is already complete (download {result.id})"
    if result.added == 0:
        return f"download {result.id} is {result.state.value} already: following it"
    return f"download {result.id} queued ({result.added} jobs)"


@contextlib.asynccontextmanager
async def _max_time(seconds: float | None, download_id: Callable[[], str | None]) -> AsyncIterator[None]:
    """Bound the block to ``seconds`` (``--max-time``, ``None``: no limit).

    Only the command gives up: the download it follows continues on the
    workers, as after Ctrl-C, since it may be shared (enqueuing the same URL
    and output again joins it).  ``rangefetch cancel`` stops it.

    Raises:
        TimeLimitError: the time ran out; the message names the download (``download_id()``).
    """
    try:
        async with asyncio.timeout(seconds) as deadline:
            yield
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        said = f"gave up after {seconds:g} s (--max-time)"
        gid = download_id()
        if gid is None:
            raise TimeLimitError(f"{said}, before the download was queued") from exc
        raise TimeLimitError(
            f"{said}; download {gid} continues on the workers: "
            f"`rangefetch wait {gid}` follows it, `rangefetch cancel {gid}` stops it"
        ) from exc


async def _sha256(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return (await hash_fd(fd, {"sha256"}))["sha256"]
    finally:
        os.close(fd)
