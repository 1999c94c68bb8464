"""Prometheus metrics of the cluster, from the dashboard's latest snapshot (``GET /metrics``).

A scrape never touches Redis: the collector reads what the shared poll
(``poller.Poller``) last saw, and ``rangefetch_dashboard_last_poll_timestamp_seconds``
says when that was.  Names follow Prometheus conventions: base units
(bytes, seconds) in the name, ``_total`` only on counters (there are none:
everything here is a gauge of Redis state), and one label set per series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rangefetch.distributed.state import DownloadState

from .poller import Poller
from .snapshot import PIECE_STATES

__all__ = ["CONTENT_TYPE", "ClusterCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ClusterCollector(Collector):
    """Gauges of downloads, ranges, host slots and workers, read from ``poller.latest``."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        snap: dict[str, Any] = self.poller.latest
        downloads = snap["downloads"]

        by_state = GaugeMetricFamily("rangefetch_downloads", "Downloads known to Redis, by state.", labels=["state"])
        for state in DownloadState:
            by_state.add_metric([state.value], sum(1 for d in downloads if d["state"] == state.value))
        yield by_state

        labels = ["download", "path"]
        size = GaugeMetricFamily("rangefetch_download_size_bytes", "Size of the file being downloaded.", labels=labels)
        done = GaugeMetricFamily(
            "rangefetch_download_completed_bytes", "Bytes of the file fetched and fsynced so far.", labels=labels
        )
        verified = GaugeMetricFamily(
            "rangefetch_download_verified_bytes", "Bytes at the start of the file checked in order.", labels=labels
        )
        lag = GaugeMetricFamily(
            "rangefetch_download_verifier_lag_bytes",
            "Bytes fetched but not yet verified, while the download runs (0 once it has ended).",
            labels=labels,
        )
        speed = GaugeMetricFamily(
            "rangefetch_download_speed_bytes_per_second", "Average speed since the download started.", labels=labels
        )
        ranges = GaugeMetricFamily(
            "rangefetch_download_ranges", "Ranges of a download, by state.", labels=[*labels, "state"]
        )
        for d in downloads:
            key = [d["gid"], d["path"]]
            size.add_metric(key, d["totalLength"])
            done.add_metric(key, d["completedLength"])
            verified.add_metric(key, d["verifiedLength"])
            running = not DownloadState(d["state"]).finished
            lag.add_metric(key, max(0, d["completedLength"] - d["verifiedLength"]) if running else 0)
            speed.add_metric(key, d["downloadSpeed"])
            counts = d.get("pieces", {}).get("counts", {})
            for piece in PIECE_STATES.values():
                ranges.add_metric([*key, piece], counts.get(piece, 0))
        yield from (size, done, verified, lag, speed, ranges)

        in_use = GaugeMetricFamily(
            "rangefetch_host_slots_in_use", "Cluster-wide connection slots held per server host.", labels=["host"]
        )
        limit = GaugeMetricFamily(
            "rangefetch_host_slots_limit", "Cluster-wide connection cap per server host.", labels=["host"]
        )
        for s in snap["slots"]:
            in_use.add_metric([s["host"]], s["inUse"])
            limit.add_metric([s["host"]], s["limit"])
        yield from (in_use, limit)

        workers = GaugeMetricFamily("rangefetch_workers", "Workers with a recent heartbeat.")
        workers.add_metric([], len(snap["workers"]))
        jobs = GaugeMetricFamily(
            "rangefetch_worker_jobs", "Jobs a live worker is running.", labels=["worker", "host", "pid"]
        )
        for w in snap["workers"]:
            jobs.add_metric([w["id"], w["host"], str(w["pid"])], w["jobs"])
        yield from (workers, jobs)

        up = GaugeMetricFamily("rangefetch_dashboard_redis_up", "1 if the dashboard's last poll of Redis succeeded.")
        up.add_metric([], 0 if snap.get("error") or self.poller.polled_at is None else 1)
        polled = GaugeMetricFamily(
            "rangefetch_dashboard_last_poll_timestamp_seconds", "Unix time of the last successful poll of Redis."
        )
        polled.add_metric([], self.poller.polled_at or 0)
        yield from (up, polled)


def render(poller: Poller) -> bytes:
    """The Prometheus text exposition of the cluster."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(poller))
    return generate_latest(registry)
