"""``rangefetch worker``: run an arq worker that fetches ranges and finalizes downloads.

Registered in the ``rangefetch.commands`` entry point group.  It builds the
settings once, configures logging (never header values, never the Redis
settings, whose repr holds the password) and runs the worker until SIGTERM
or SIGINT, or until the queue is empty with ``--burst``.

Proxies and the default trust store (``--proxy``, ``--noproxy``,
``--ca-certificate``, ``--insecure``, or the standard variables) are the
worker's own: they are checked before it starts, since a proxy URL or CA
file it could not use would fail every range it takes.  A download
enqueued with its own CA certificates or ``--insecure`` keeps them
(``Runtime.client_for``).

Redis outages: commands retry for about a minute (``redis_settings``).
When arq's loop still dies of a Redis error, the worker is closed (its jobs
save their progress and go back to the queue) and started again after a
delay that grows to ``MAX_RESTART_DELAY``.  A worker that cannot reach Redis
at its very first start exits with one line instead: that is a
configuration error more often than an outage.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import click
from arq.worker import Worker
from redis.exceptions import RedisError

from rangefetch import QueueError, Settings, redact_url
from rangefetch.cli import build_settings, network_options, run, setup_logging
from rangefetch.connections import redis_settings
from rangefetch.network import check_network

from .runtime import RUNTIME_KEY, shutdown
from .settings import create_worker

__all__ = ["serve", "worker"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0


@click.command()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Range jobs run at once (default 8).")
@click.option("--burst", is_flag=True, help="Stop once the queue is empty.")
@click.option("--redis", "redis_url", help="Redis URL (default: RANGEFETCH_REDIS_URL).")
@network_options
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def worker(
    concurrency: int | None,
    burst: bool,
    redis_url: str | None,
    proxy: str | None,
    no_proxy: str | None,
    ca_certificate: Path | None,
    insecure: bool | None,
    verbose: bool,
) -> None:
    """Fetch ranges and finalize downloads from the Redis queue until stopped."""
    # A worker is a service: it logs what it does (info) by default, with times and sources.
    setup_logging(2 if verbose else 1, fmt=LOG_FORMAT)

    async def main() -> None:
        settings = build_settings(
            worker_concurrency=concurrency, redis_url=redis_url,
            proxy=proxy, no_proxy=no_proxy, ca_certificate=ca_certificate, insecure=insecure,
        )  # fmt: skip
        redis_settings(settings)  # a missing or malformed URL fails here, in one line
        check_network(settings)
        await serve(settings, burst=burst)

    run(main)


async def serve(settings: Settings, *, burst: bool = False, **overrides: Any) -> None:
    """Run a worker until a signal stops it (or the queue is empty with ``burst``).

    Raises:
        QueueError: Redis cannot be reached at the first start.
    """
    where = redact_url(settings.redis_url or "")
    delay = FIRST_RESTART_DELAY
    started = False
    while True:
        worker = create_worker(settings, burst=burst, **overrides)
        try:
            await worker.async_run()
            return  # burst: the queue is empty
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled, not the worker stopped by a signal
            return
        except (RedisError, OSError) as exc:
            started = started or RUNTIME_KEY in worker.ctx
            if not started:
                raise QueueError(f"cannot use Redis at {where}: {exc}") from exc
            log.error("lost Redis at %s (%s: %s); restarting in %.0fs", where, type(exc).__name__, exc, delay)
        finally:
            started = started or RUNTIME_KEY in worker.ctx
            await _close(worker)
        if await _stopped_within(delay):
            return
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
        log.warning("closing the worker: %s", exc)
        await shutdown(worker.ctx)  # arq skipped on_shutdown
        try:
            await worker.pool.aclose()
        except (RedisError, OSError):
            pass


async def _stopped_within(seconds: float) -> bool:
    """Wait ``seconds``; ``True`` if SIGTERM or SIGINT came first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except TimeoutError:
        return False
