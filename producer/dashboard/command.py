"""``rangefetch dashboard``: serve the web page and the metrics (named by ``rangefetch.program``).

This module imports only click and rangefetch, so ``rangefetch --help``
works without the ``dashboard`` extra; the command itself says which
extra to install when Starlette, uvicorn or prometheus_client is missing.
"""

from __future__ import annotations

import ipaddress
import logging

import click

from rangefetch.distributed.connections import open_redis
from rangefetch.errors import UsageError
from rangefetch.options import build_settings
from rangefetch.runner import run, setup_logging

__all__ = ["dashboard", "is_loopback"]

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'rangefetch[dashboard]'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8808, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--token",
    envvar="RANGEFETCH_DASHBOARD_TOKEN",
    help="Secret the cancel and resume buttons need (required with a non-loopback --host; "
    "default: RANGEFETCH_DASHBOARD_TOKEN).",
)
@click.option(
    "--redis", "redis_url", help="Redis URL, e.g. redis://:password@host:6379/0 (default: RANGEFETCH_REDIS_URL)."
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def dashboard(host: str, port: int, token: str | None, redis_url: str | None, verbose: int) -> None:
    """Serve a live web page of the distributed downloads, and Prometheus metrics at /metrics.

    The page shows every download with its piece map and throughput, the
    live workers and the connection slots per host, and has cancel and
    resume buttons.  It listens on 127.0.0.1 unless told otherwise; on any
    other address the buttons need --token.  Resume probes the server and
    opens the .part file, as `rangefetch enqueue` does: run the dashboard
    where the download directory (RANGEFETCH_DOWNLOAD_DIR) is mounted.
    """
    setup_logging(verbose)

    async def main() -> None:
        try:
            from .app import create_app
            from .serve import serve
        except ImportError as exc:
            missing = (exc.name or "a module").partition(".")[0]
            raise UsageError(f"the dashboard needs the 'dashboard' extra ({missing} is missing): {EXTRA_HINT}") from exc
        if not is_loopback(host) and not token:
            raise UsageError(
                f"--host {host} is reachable from other machines: give --token (or RANGEFETCH_DASHBOARD_TOKEN)"
            )
        settings = build_settings(redis_url=redis_url)
        redis = await open_redis(settings, patient=True)  # a bad URL or a dead Redis fails here, in one line
        try:
            app = create_app(settings, host=host, token=token or None, redis=redis)
            click.echo(f"rangefetch: dashboard on http://{_netloc(host, port)}/ (metrics at /metrics)", err=True)
            await serve(app, host=host, port=port, verbose=verbose)
        finally:
            await redis.aclose()

    run(main)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
