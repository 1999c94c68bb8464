"""``rangefetch dashboard``: a live web page of the cluster and Prometheus metrics.

``command`` is the CLI entry point (it needs only click); ``app`` is the
Starlette app, ``poller`` the one shared poll of Redis, ``snapshot`` what
it reads (through ``producer.monitor`` and ``Store``, as ``status`` does),
``metrics`` the Prometheus collector and ``actions`` the cancel and resume
buttons.  The web stack comes with the ``dashboard`` extra.
"""
