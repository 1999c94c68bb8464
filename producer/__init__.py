"""The producer side of distributed mode: put downloads on the queue, watch and steer them.

``enqueue`` probes, records the download, creates its file and enqueues its
ranges (through ``rangefetch.distributed.queue``, which writes arq jobs in bulk with
fair scores); ``monitor`` and ``watch`` back ``status``, ``wait``, ``cancel`` and ``workers``; ``cli``
holds the commands, which plug into ``rangefetch`` through entry points.
"""

from .enqueue import Enqueued, download_id, enqueue

__all__ = ["Enqueued", "download_id", "enqueue"]
