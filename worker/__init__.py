"""The distributed worker: arq jobs that fetch ranges and finalize downloads.

``rangefetch worker`` (``cli.py``) runs an arq ``Worker`` configured in
``settings.py``, whose docstring explains the timeouts, leases and limits.
The jobs are ``fetch_range`` (``jobs.py``: a run of consecutive ranges,
each fetched by ``transfer.py``), ``finalize`` and the ``sweep``
cron job (``finalize.py``); ``runtime.py`` holds the per-process state
(the httpx clients, the ``Store``, the heartbeat), ``lease.py`` a run's
claims in Redis, renewed together, ``files.py``
the ``.part`` file handling and hashing, and ``handoff.py`` the rule by
which a straggling range run hands its range to another connection.
Everything here imports only from ``rangefetch``; installed as
``rangefetch.worker`` (``rangefetch/worker`` links to this folder).
"""
