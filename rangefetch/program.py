"""The ``rangefetch`` program: the core's commands with the producer's and the worker's.

The one module that names all three parts.  The core (``rangefetch.cli`` and
what it uses) never imports ``rangefetch.producer`` or ``rangefetch.worker``;
this module hands their commands to it by import path (``Extensions``), and
each is imported on first use.
"""

from __future__ import annotations

from .cli import Extensions
from .cli import main as run_cli

__all__ = ["EXTENSIONS", "main"]

EXTENSIONS = Extensions(
    commands={
        "enqueue": "rangefetch.producer.cli:enqueue",
        "status": "rangefetch.producer.cli:status",
        "wait": "rangefetch.producer.cli:wait",
        "cancel": "rangefetch.producer.cli:cancel",
        "workers": "rangefetch.producer.cli:workers",
        "dashboard": "rangefetch.producer.dashboard.command:dashboard",
        "worker": "rangefetch.worker.cli:worker",
    },
    distributed_get="rangefetch.producer.cli:distributed_get",
)


def main() -> None:
    """Console entry point (``rangefetch``, ``python -m rangefetch``)."""
    run_cli(EXTENSIONS)
