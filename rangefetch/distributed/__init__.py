"""The distributed layer: what a cluster of workers shares through Redis.

``store`` (one ``Store`` over Redis, made of ``downloads`` (a download's
record), ``ranges`` (its ranges' progress and digests), ``leases`` (guards,
connection slots, rate tokens) and ``workers`` (the worker registry), on
``access``), ``keys`` (the Redis key names), ``scripts`` (the Lua that
changes them atomically), ``queue`` (the arq queue and its job names),
``state`` (a download's states), ``status`` (what ``rangefetch status``
shows), ``connections`` (Redis connections that fail fast and ride out
restarts).  The core around it (``rangefetch/``) is shared by embedded
mode; ``producer/`` and ``worker/`` are built on both.
"""
