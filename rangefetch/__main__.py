"""``python -m rangefetch``: the same as the ``rangefetch`` command."""

from .cli import main

main()
