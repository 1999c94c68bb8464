"""The seed API: ``Downloader``, an async iterator over a file's bytes.

::

    async with Downloader(url) as downloader:
        size = await downloader.get_size()
        async for start, end, content in downloader.start():
            f.seek(start)
            f.write(content)

Unlike the blog post it grew from, every byte comes exactly once at its
absolute offset (``end == start + len(content)``), the consumer's pace sets
the download's pace (a bounded queue), errors reach the caller, and a server
that ignores ``Range`` or answers with an error page never yields a byte of it.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncGenerator
from types import TracebackType

import httpx

from .client import check_url, make_client
from .errors import UnknownSizeError, collapse
from .fetch import Writer
from .plan import choose_chunk_size, plan_ranges
from .pool import Pool
from .probe import RemoteFile, probe
from .retry import Backoff
from .settings import Settings

__all__ = ["Downloader"]

Chunk = tuple[int, int, bytes]


class _Blocks:
    """A ``Writer`` that cuts one range's bytes into ``block_size`` pieces for the queue."""

    def __init__(self, queue: asyncio.Queue[Chunk | BaseException | None], block_size: int) -> None:
        self._queue = queue
        self._block_size = block_size
        self._buffer = bytearray()
        self._start = 0

    async def write(self, offset: int, data: bytes) -> None:
        if not self._buffer:
            self._start = offset
        self._buffer += data
        while len(self._buffer) >= self._block_size:
            await self._emit(self._block_size)

    async def close(self) -> None:
        """Hand over the range's last, shorter piece."""
        if self._buffer:
            await self._emit(len(self._buffer))

    async def _emit(self, n: int) -> None:
        with memoryview(self._buffer) as view:
            content = bytes(view[:n])
        del self._buffer[:n]
        start = self._start
        self._start += n
        await self._queue.put((start, start + n, content))


class Downloader:
    """Download one file over ``max_workers`` concurrent range requests.

    Args:
        url: an http:// or https:// URL.
        max_workers: concurrent range requests.
        block_size: size of the ``content`` pieces ``start()`` yields; the last
            piece of each range may be shorter.
        client: an ``httpx.AsyncClient`` of the caller's, used as it is and
            left open; without one, a client is built and closed here.
        loop: accepted for compatibility and ignored.
        settings: timeouts and retry policy (default ``Settings.defaults()``,
            which reads no ``RANGEFETCH_*`` variable).

    Raises:
        UsageError: a bad URL, ``max_workers`` or ``block_size``.
    """

    def __init__(
        self,
        url: str,
        max_workers: int = 10,
        block_size: int = 1024 * 1024,
        client: httpx.AsyncClient | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        url = check_url(url)  # with http:// in front if it names no scheme, as curl does
        if max_workers < 1 or block_size < 1:
            raise ValueError("max_workers and block_size must be at least 1")
        if loop is not None:
            warnings.warn("Downloader(loop=...) is ignored", DeprecationWarning, stacklevel=2)
        self.url = url
        self.max_workers = max_workers
        self.block_size = block_size
        self.settings = settings or Settings.defaults(connections=min(max_workers, 256))
        self._own_client = client is None
        self.client = client or make_client(self.settings)
        self._remote: RemoteFile | None = None

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_client:
            await self.client.aclose()

    async def remote(self) -> RemoteFile:
        """What the probe found at the URL (probed once, then remembered)."""
        if self._remote is None:
            self._remote = await probe(self.client, self.url, backoff=Backoff(self.settings.retry))
        return self._remote

    async def get_size(self) -> int:
        """The file's size in bytes.

        Raises:
            UnknownSizeError: the server does not say (``start()`` still works).
            DownloadError: the probe failed.
        """
        remote = await self.remote()
        if remote.size is None:
            raise UnknownSizeError("the server does not say how large the file is", url=self.url)
        return remote.size

    async def start(self) -> AsyncGenerator[Chunk, None]:
        """Yield ``(start, end, content)`` until the whole file has been yielded.

        Raises:
            DownloadError: any range failed; nothing after the failure is yielded.
        """
        remote = await self.remote()
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(maxsize=2 * self.max_workers)
        producer = asyncio.create_task(self._produce(remote, queue))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _produce(self, remote: RemoteFile, queue: asyncio.Queue[Chunk | BaseException | None]) -> None:
        try:
            await self._fetch_all(remote, queue)
        except asyncio.CancelledError:
            raise
        except BaseExceptionGroup as group:
            await queue.put(collapse(group))
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(None)

    async def _fetch_all(self, remote: RemoteFile, queue: asyncio.Queue[Chunk | BaseException | None]) -> None:
        if remote.size == 0:
            return
        # The same fetchers as download(): a range left to a slow connection
        # is split for an idle one, and its pieces still come each once.
        pool = Pool(self.client, remote, self.settings)
        if not remote.ranges or remote.size is None:
            blocks = _Blocks(queue, self.block_size)
            await pool.stream(blocks)
            await blocks.close()
            return
        chunk = choose_chunk_size(remote.size, self.max_workers)
        chunk = -(-chunk // self.block_size) * self.block_size  # whole blocks per range
        pool.plan(plan_ranges(remote.size, chunk))
        await pool.ranges(lambda _: _Blocks(queue, self.block_size), _close)


async def _close(blocks: Writer) -> None:
    """Hand over a segment's last, shorter piece."""
    assert isinstance(blocks, _Blocks)
    await blocks.close()
