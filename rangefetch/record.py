"""The resume record kept beside a ``.part`` file.

It holds what is needed to continue a download safely: the size and
validator of the remote file, the chunk size, and the ranges already on disk
(only ranges whose bytes were fsynced before the record was written).  A rerun
resumes only when it asks for the same URL and the remote file still has the
same size and validator; without a validator there is no way to tell, so it
starts over (aria2c and axel resume blindly here and can produce a mixed file).

No secret is written here: the URL is kept redacted (``redact_url``: no
password, no token-like query values), for people reading the file, and the
full URL only as a salted SHA-256 digest, to tell a rerun of the same URL.
The file is readable by its owner only (mode 0600, whatever the umask).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .plan import Range
from .probe import RemoteFile
from .redact import redact_url

__all__ = ["ResumeRecord"]

log = logging.getLogger(__name__)

VERSION = 2  # 1 kept the full URL; it is still read, and rewritten without it
MODE = 0o600  # the record says what is being downloaded from where: its owner's business
_SALT_BYTES = 16


def digest_url(url: str, salt: str | None = None) -> str:
    """``SALT:HEX``, the SHA-256 of ``SALT`` and ``url`` (a fresh random salt unless given).

    The salt keeps the digest of a URL with a short password from being
    looked up in a table made in advance.
    """
    salt = os.urandom(_SALT_BYTES).hex() if salt is None else salt
    return f"{salt}:{hashlib.sha256(f'{salt}:{url}'.encode()).hexdigest()}"


@dataclass(slots=True)
class ResumeRecord:
    """What a rerun needs to know to resume a download.

    ``url`` is the redacted URL, ``url_digest`` the ``digest_url()`` of the full one.
    """

    url: str
    url_digest: str
    size: int
    etag: str | None
    last_modified: str | None
    chunk_size: int
    done: list[str] = field(default_factory=list)

    @classmethod
    def for_remote(cls, remote: RemoteFile, chunk_size: int) -> ResumeRecord:
        """A fresh record for ``remote`` with nothing done yet."""
        assert remote.size is not None
        return cls(
            url=redact_url(remote.url),
            url_digest=digest_url(remote.url),
            size=remote.size,
            etag=remote.etag,
            last_modified=remote.last_modified,
            chunk_size=chunk_size,
        )

    def is_for(self, url: str) -> bool:
        """Whether this record was written for a download of ``url``."""
        salt, _, _ = self.url_digest.partition(":")
        return hmac.compare_digest(digest_url(url, salt), self.url_digest)

    def ranges(self) -> list[Range]:
        """The ranges recorded as done."""
        return [Range.parse(text) for text in self.done]

    def mismatch(self, remote: RemoteFile) -> str | None:
        """Why this record cannot be resumed onto ``remote``, or ``None`` if it can.

        The URL must be the recorded one up to its secrets: a presigned URL
        fetched again with a fresh signature, or a new password, still
        resumes (the size and validators pin the file); another host, path
        or file does not.  ``is_for`` tells the exact URL apart.
        """
        if redact_url(remote.url) != self.url:
            return f"the URL is not the one recorded ({self.url})"
        if not self.is_for(remote.url):
            log.debug("resuming %s with other credentials or signature than recorded", self.url)
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
        """Read the record at ``path``; ``None`` when there is none or it is unreadable.

        A record that others can read is made private (mode 0600) on the way;
        one written by version 1, with the full URL in it, loads with that
        URL redacted and digested, and the next ``save`` drops it from disk.
        """
        try:
            data = json.loads(_read_private(path))
            if not isinstance(data, dict):
                return None
            version = data.pop("version", None)
            if version == 1:
                data = _from_version_1(data)
            elif version != VERSION:
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
        if not isinstance(self.url_digest, str) or ":" not in self.url_digest:
            raise ValueError("bad url_digest")
        if not is_int(self.chunk_size) or self.chunk_size < 1:
            raise ValueError("bad chunk_size")
        for value in (self.etag, self.last_modified):
            if value is not None and not isinstance(value, str):
                raise ValueError("bad validator")
        if not isinstance(self.done, list) or not all(isinstance(text, str) for text in self.done):
            raise ValueError("bad list of done ranges")
        self.ranges()

    def save(self, path: Path) -> None:
        """Write the record atomically (temporary file, fsync, rename), mode 0600."""
        tmp = path.with_name(path.name + ".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        with open(os.open(tmp, flags, MODE), "w") as f:
            # O_CREAT's mode applies only to a new file, and through the
            # umask: a leftover temporary file keeps its own without this.
            os.fchmod(f.fileno(), MODE)
            json.dump({"version": VERSION, **asdict(self)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _read_private(path: Path) -> str:
    """The text of ``path`` (never through a symlink), first made mode 0600 if others could read it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with open(fd, encoding="utf-8", errors="strict") as f:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            with contextlib.suppress(OSError):  # not ours to change: read it all the same
                os.fchmod(fd, MODE)
        return f.read()


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record's fields as version 2 has them: the full URL redacted and digested."""
    url = data.get("url")
    if not isinstance(url, str):
        raise ValueError("bad url")
    return {**data, "url": redact_url(url), "url_digest": digest_url(url)}
