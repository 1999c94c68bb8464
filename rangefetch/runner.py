"""How a command runs: its logging (``setup_logging``), and its coroutine to an exit code (``run``).

Shared by ``get`` and the producer's and worker's commands.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from ._startup import end_quiet_interrupts
from .errors import RangefetchError

__all__ = ["EXIT_INTERRUPTED", "LOG_FORMAT", "run", "setup_logging"]

T = TypeVar("T")
EXIT_INTERRUPTED = 130
LOG_FORMAT = "rangefetch: %(message)s"


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
