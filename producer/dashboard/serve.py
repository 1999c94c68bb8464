"""Serving the dashboard with uvicorn, in the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from rangefetch.errors import UsageError

__all__ = ["serve"]


class _Server(uvicorn.Server):
    """uvicorn's server, ending quietly on SIGINT or SIGTERM.

    uvicorn raises the signal it caught again after its graceful shutdown,
    so a dashboard stopped by SIGTERM would look killed (and Ctrl-C would
    end in a ``KeyboardInterrupt``); a dashboard that was asked to stop and
    did has done its job: exit 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


async def serve(app: Starlette, *, host: str, port: int, verbose: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM.

    Raises:
        UsageError: the address cannot be listened on.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
        access_log=verbose > 1,
        timeout_graceful_shutdown=2,  # open event streams end with the server
        server_header=False,
        lifespan="on",
    )
    server = _Server(config)
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn's answer to a failed bind or startup, after logging why
        raise UsageError(f"cannot serve the dashboard on {host}:{port}") from exc
