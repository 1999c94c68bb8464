"""A worker's own Prometheus metrics (``rangefetch worker --metrics-port N``).

The dashboard's ``/metrics`` gives the cluster as Redis holds it; this
gives what one worker process sees: bytes fetched, ranges done, failed and
retried, connections open to servers, and how long a round trip to Redis
takes (timed on the heartbeat).  Without ``--metrics-port`` every hook is a
no-op and prometheus_client (the ``dashboard`` extra) is never imported.

A process runs one worker (arq's, restarted after a long Redis outage),
so the metrics are the process's: ``enable`` installs them once and every
``Runtime`` built afterwards reports to them (``current``), as
prometheus_client's own default registry is the process's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rangefetch.errors import UsageError

__all__ = ["WorkerMetrics", "current", "enable"]


class WorkerMetrics:
    """The hooks a worker calls; this base does nothing (no ``--metrics-port``)."""

    def fetched(self, nbytes: int) -> None:
        """``nbytes`` more arrived from a server and went to the file."""

    def range_done(self) -> None:
        """A range was fetched, fsynced and recorded done."""

    def range_failed(self) -> None:
        """A range failed for good (the download fails with it)."""

    def range_retried(self) -> None:
        """A range waits to try again after a transient failure."""

    @contextlib.contextmanager
    def connection(self) -> Iterator[None]:
        """Around a range run that holds a connection slot (a connection to a server)."""
        yield

    def redis_roundtrip(self, seconds: float) -> None:
        """A Redis round trip (the heartbeat's) took ``seconds``."""


class _Prometheus(WorkerMetrics):
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._bytes = Counter(
            "rangefetch_worker_fetched_bytes", "Bytes fetched from servers and written.", registry=registry
        )
        self._ranges = Counter(
            "rangefetch_worker_ranges", "Range runs by how they ended.", ["outcome"], registry=registry
        )
        self._open = Gauge(
            "rangefetch_worker_open_connections", "Range runs holding a connection to a server now.", registry=registry
        )
        self._rtt = Histogram(
            "rangefetch_worker_redis_roundtrip_seconds",
            "Time of a Redis round trip (the heartbeat's pipeline).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        for outcome in ("done", "failed", "retried"):
            self._ranges.labels(outcome)  # every series from the start, at 0

    def fetched(self, nbytes: int) -> None:
        self._bytes.inc(nbytes)

    def range_done(self) -> None:
        self._ranges.labels("done").inc()

    def range_failed(self) -> None:
        self._ranges.labels("failed").inc()

    def range_retried(self) -> None:
        self._ranges.labels("retried").inc()

    @contextlib.contextmanager
    def connection(self) -> Iterator[None]:
        with self._open.track_inprogress():
            yield

    def redis_roundtrip(self, seconds: float) -> None:
        self._rtt.observe(seconds)


_current: WorkerMetrics = WorkerMetrics()


def current() -> WorkerMetrics:
    """The process's metrics: the no-op base until ``enable``."""
    return _current


def enable(*, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve the process's metrics at ``http://host:port/metrics``; returns the function that stops serving.

    Raises:
        UsageError: prometheus_client is missing, or the port cannot be listened on.
    """
    global _current
    try:
        from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
    except ImportError as exc:
        raise UsageError("--metrics-port needs prometheus_client: pip install 'rangefetch[dashboard]'") from exc
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: the start time says as much
    registry = CollectorRegistry()
    metrics = _Prometheus(registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    _current = metrics

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
