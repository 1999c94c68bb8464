"""The distributed layer: what a cluster of workers shares through Redis.

``store`` (a download's record, its ranges, leases and progress), ``keys``
(the Redis key names), ``scripts`` (the Lua that changes them atomically),
``queue`` (the arq queue and its job names), ``state`` (a download's states),
``status`` (what ``rangefetch status`` shows), ``connections`` (Redis
connections that fail fast and ride out restarts).  The core around it
(``rangefetch/``) is shared by embedded mode; ``producer/`` and ``worker/``
are built on both.
"""
