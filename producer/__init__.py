"""The producer side of distributed mode: put downloads on the queue, watch and steer them.

``enqueue`` probes, records the download, creates its file and enqueues its
ranges (through ``rangefetch.distributed.queue``, which writes arq jobs in bulk with
fair scores); ``monitor`` and ``watch`` back ``status``, ``wait``, ``cancel`` and ``workers``; ``cli``
holds the commands, which the program (``rangefetch.program``) adds to ``rangefetch``.
Installed as ``rangefetch.producer`` (``rangefetch/producer`` links to this folder).
"""

from .enqueue import Enqueued, download_id, enqueue

__all__ = ["Enqueued", "download_id", "enqueue"]
