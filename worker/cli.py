"""``rangefetch worker``: run an arq worker that fetches ranges and finalizes downloads.

Named by the program (``rangefetch.program``), imported on first use.  It builds the
settings once, configures logging (never header values, never the Redis
settings, whose repr holds the password) and runs the worker until SIGTERM
or SIGINT, or until the queue is empty with ``--burst``.

A worker is quiet by default: one line when it starts and stops, one per
download it starts and one per download it ends (complete or failed), and
what goes wrong (Redis lost and back, a lease lost, ranges redone).  Per-range
lines, its own and arq's (a job started, done, retried), come with ``-v``.
An expected failure (a ``RangefetchError``: the remote file changed, an HTTP
404) is one line without a traceback (``ExpectedErrors``); a traceback means a bug.

Proxies and the default trust store (``--proxy``, ``--noproxy``,
``--ca-certificate``, ``--insecure``, or the standard variables) are the
worker's own: they are checked before it starts, since a proxy URL or CA
file it could not use would fail every range it takes.  So is its local
address (``--interface ADDR``, ``RANGEFETCH_INTERFACE``): every connection
the worker makes to a server or proxy comes from it (not its Redis
connection), and its heartbeat reports it.  A download
enqueued with its own CA certificates or ``--insecure`` keeps them
(``Runtime.client_for``).

``--metrics-port N`` serves the worker's own Prometheus metrics, on
127.0.0.1 unless ``--metrics-host`` says otherwise (``worker.metrics``; prometheus_client comes with the
``dashboard`` extra).

Redis (``rangefetch.distributed.connections``): the first contact fails fast, so a
worker that cannot reach Redis at its very first start exits with one line
(a configuration error more often than an outage).  Once reached, commands
ride out ``PATIENT_OUTAGE`` seconds of outage, and the process logs one line
when Redis is lost and one when it is back.  When arq's loop still dies of
a Redis error (a longer outage), the worker is closed (its jobs save their
progress and go back to the queue), says so once, and is started again as
soon as Redis answers, trying after a delay that grows to
``MAX_RESTART_DELAY``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import click
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from redis.exceptions import RedisError

from rangefetch import QueueError, RangefetchError, Settings
from rangefetch.distributed.connections import PATIENT_OUTAGE, RedisLink, redis_settings
from rangefetch.network import check_network
from rangefetch.options import (
    build_settings,
    interface_option,
    network_options,
    retry_options,
    speed_options,
)
from rangefetch.runner import run, setup_logging

from .metrics import enable as enable_metrics
from .runtime import shutdown
from .settings import create_worker

__all__ = ["ExpectedErrors", "quiet_arq", "serve", "worker"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0

T = TypeVar("T")


@click.command()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Range jobs run at once (default 8).")
@click.option("--burst", is_flag=True, help="Stop once the queue is empty.")
@click.option("--redis", "redis_url", help="Redis URL (default: RANGEFETCH_REDIS_URL).")
@network_options
@speed_options
@retry_options
@click.option("-A", "--user-agent", metavar="NAME", help="User-Agent for downloads enqueued without one of their own.")
@click.option(
    "--per-host-rate", metavar="RATE",
    help="At most RATE bytes/s from one server host, over the whole cluster, e.g. 50M (default: no limit).",
)  # fmt: skip
@interface_option
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
    help="Serve this worker's Prometheus metrics on PORT at /metrics (needs the 'dashboard' extra).",
)  # fmt: skip
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDR",
    help="Address the --metrics-port server listens on.",
)  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Per-range and debug lines too.")
def worker(
    concurrency: int | None,
    burst: bool,
    redis_url: str | None,
    proxy: str | None,
    no_proxy: str | None,
    ca_certificate: Path | None,
    insecure: bool | None,
    speed_limit: str | None,
    speed_time: float | None,
    max_tries: int | None,
    retry_wait: float | None,
    connect_timeout: float | None,
    user_agent: str | None,
    per_host_rate: str | None,
    interface: str | None,
    metrics_port: int | None,
    metrics_host: str,
    verbose: bool,
) -> None:
    """Fetch ranges and finalize downloads from the Redis queue until stopped.

    A connection slower than --speed-limit over --speed-time is re-opened
    from its last byte.
    """
    # A worker is a service: it logs what it does (info) by default, with times and sources.
    setup_logging(2 if verbose else 1, fmt=LOG_FORMAT)
    quiet_arq(verbose=verbose)

    async def main() -> None:
        settings = build_settings(
            worker_concurrency=concurrency, redis_url=redis_url,
            proxy=proxy, no_proxy=no_proxy, ca_certificate=ca_certificate, insecure=insecure,
            speed_limit=speed_limit, speed_time=speed_time, interface=interface,
            max_tries=max_tries, retry_wait=retry_wait, connect_timeout=connect_timeout,
            user_agent=user_agent, per_host_rate=per_host_rate,
        )  # fmt: skip
        redis_settings(settings)  # a missing or malformed URL fails here, in one line
        check_network(settings)
        stop_metrics = enable_metrics(port=metrics_port, host=metrics_host) if metrics_port is not None else None
        try:
            await serve(settings, burst=burst)
        finally:
            if stop_metrics is not None:
                stop_metrics()

    run(main)


class ExpectedErrors(logging.Filter):
    """Takes arq's line with a traceback off a job that failed with a ``RangefetchError``.

    Such a failure is expected (an HTTP 404, a changed remote file, a
    checksum that does not match): the job has recorded it on the download
    and logged it in one line (``worker.downloads.fail``).  arq logs every
    failed job with its traceback, which is for bugs: for these the line is
    dropped, or kept without the traceback with ``-v``.
    """

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or not isinstance(record.exc_info[1], RangefetchError):
            return True
        record.exc_info = record.exc_text = None
        return self.verbose


def quiet_arq(*, verbose: bool) -> None:
    """arq's own lines: its line per job start, end and retry (per-range lines) only with ``verbose``.

    Its warnings stay; ``ExpectedErrors`` takes the tracebacks off expected failures.
    """
    arq_log = logging.getLogger("arq.worker")
    if not verbose:
        arq_log.setLevel(logging.WARNING)
    arq_log.addFilter(ExpectedErrors(verbose=verbose))


async def serve(settings: Settings, *, burst: bool = False, **overrides: Any) -> None:
    """Run a worker until a signal stops it (or the queue is empty with ``burst``).

    ``overrides`` are arq ``Worker`` arguments; ``redis_settings`` among them
    replaces the ones built from ``settings`` (tests make them fragile).

    Raises:
        UsageError: no or malformed Redis URL.
        QueueError: Redis cannot be reached, or refuses us, at the first start.
    """
    link = RedisLink(settings.redis_url or "", outage=PATIENT_OUTAGE)
    rs = overrides.pop("redis_settings", None) or redis_settings(settings, link=link)
    pool: ArqRedis | None = await link.open(rs, queue_name=settings.distributed.queue_name)
    while pool is not None:
        worker = create_worker(settings, burst=burst, redis_pool=pool, **overrides)
        try:
            await worker.async_run()
            return  # burst: the queue is empty
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled, not the worker stopped by a signal
            return
        except (RedisError, OSError) as exc:
            link.failed(exc)
            log.warning(
                "worker stopped (Redis at %s: %s); its jobs are back in the queue; it starts again once Redis answers",
                link.where, link.cause(exc),
            )  # fmt: skip
        finally:
            await _close(worker)
        pool = await _reopen(link, rs, settings.distributed.queue_name)
        if pool is not None:
            log.info("worker started again")


async def _reopen(link: RedisLink, rs: RedisSettings, queue_name: str) -> ArqRedis | None:
    """A pool once Redis answers again, trying after growing delays; ``None`` if SIGTERM or SIGINT came first."""
    delay = FIRST_RESTART_DELAY
    while True:
        if await _unless_signalled(asyncio.sleep(delay, result=True)) is None:
            return None
        try:
            return await _unless_signalled(link.open(rs, queue_name=queue_name))
        except QueueError as exc:
            log.debug("%s; next try in %.0fs", exc, min(delay * 2, MAX_RESTART_DELAY))
        delay = min(delay * 2, MAX_RESTART_DELAY)


async def _close(worker: Worker) -> None:
    """Stop ``worker``'s jobs (they save progress and are re-queued) and close it, even without Redis."""
    tasks = list(worker.tasks.values())
    for task in tasks:
        # After a signal arq has cancelled them already; a second cancel would
        # cut short the cleanup that records their progress.
        if not task.done() and not task.cancelling():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    worker.tasks.clear()
    try:
        await worker.close()
    except (RedisError, OSError) as exc:
        log.info("closing the worker without Redis: %s", exc)  # the loss was said already
        await shutdown(worker.ctx)  # arq skipped on_shutdown
        try:
            await worker.pool.aclose()
        except (RedisError, OSError):
            pass


async def _unless_signalled(aw: Awaitable[T]) -> T | None:
    """``await aw``, unless SIGTERM or SIGINT comes first: then ``aw`` is cancelled and ``None`` returned.

    Between two arq workers nobody else listens for the signals.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(aw)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled
        return None
