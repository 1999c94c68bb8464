"""``python -m rangefetch``: the same as the ``rangefetch`` command."""

from .program import main

main()
