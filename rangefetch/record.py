"""The resume record kept beside a ``.part`` file.

It holds what is needed to continue a download safely: the URL, the size and
validator of the remote file, the chunk size, and the ranges already on disk
(only ranges whose bytes were fsynced before the record was written).  A rerun
resumes only when the remote file still has the same size and validator;
without a validator there is no way to tell, so it starts over (aria2c and axel
resume blindly here and can produce a mixed file).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .plan import Range
from .probe import RemoteFile

__all__ = ["ResumeRecord"]

log = logging.getLogger(__name__)

VERSION = 1


@dataclass(slots=True)
class ResumeRecord:
    """What a rerun needs to know to resume a download."""

    url: str
    size: int
    etag: str | None
    last_modified: str | None
    chunk_size: int
    done: list[str] = field(default_factory=list)

    @classmethod
    def for_remote(cls, remote: RemoteFile, chunk_size: int) -> ResumeRecord:
        """A fresh record for ``remote`` with nothing done yet."""
        assert remote.size is not None
        return cls(remote.url, remote.size, remote.etag, remote.last_modified, chunk_size)

    def ranges(self) -> list[Range]:
        """The ranges recorded as done."""
        return [Range.parse(text) for text in self.done]

    def mismatch(self, remote: RemoteFile) -> str | None:
        """Why this record cannot be resumed onto ``remote``, or ``None`` if it can."""
        if remote.size != self.size:
            return f"size changed from {self.size} to {remote.size} bytes"
        if not (self.etag or self.last_modified):
            return "the server gives no ETag or Last-Modified to check the file against"
        if self.etag != remote.etag:
            return f"ETag changed from {self.etag} to {remote.etag}"
        if self.last_modified != remote.last_modified:
            return f"Last-Modified changed from {self.last_modified} to {remote.last_modified}"
        return None

    @classmethod
    def load(cls, path: Path) -> ResumeRecord | None:
        """Read the record at ``path``; ``None`` when there is none or it is unreadable."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.pop("version", None) != VERSION:
                return None
            record = cls(**data)
            record._check()
            return record
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable resume record %s: %s", path, exc)
            return None

    def _check(self) -> None:
        """Raise ``ValueError`` unless every field has a usable type and value."""

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.url, str) or not is_int(self.size) or self.size < 0:
            raise ValueError("bad url or size")
        if not is_int(self.chunk_size) or self.chunk_size < 1:
            raise ValueError("bad chunk_size")
        for value in (self.etag, self.last_modified):
            if value is not None and not isinstance(value, str):
                raise ValueError("bad validator")
        if not isinstance(self.done, list) or not all(isinstance(text, str) for text in self.done):
            raise ValueError("bad list of done ranges")
        self.ranges()

    def save(self, path: Path) -> None:
        """Write the record atomically (temporary file, fsync, rename)."""
        tmp = path.with_name(path.name + ".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        with open(os.open(tmp, flags, 0o644), "w") as f:
            json.dump({"version": VERSION, **asdict(self)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
