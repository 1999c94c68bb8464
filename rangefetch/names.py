"""Choosing the output file name, and keeping it inside the download directory.

A name that comes from the network (Content-Disposition, RFC 6266, or the
URL path) is reduced to a plain file name: no directory part, no ``..``, no
control characters.  Whatever the name, the result must resolve inside the
chosen directory, or the request is refused.
"""

from __future__ import annotations

import os
import re
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import UnsafePathError

__all__ = ["filename_from_disposition", "filename_from_url", "resolve_output", "safe_name"]

DEFAULT_NAME = "download"
_MAX_NAME_BYTES = 255 - len(".part.json.tmp")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_name(name: str | None) -> str | None:
    """``name`` reduced to a harmless file name, or ``None`` when nothing usable is left."""
    if not name:
        return None
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("", name).strip().strip(".").strip()
    if not name:
        return None
    encoded = name.encode("utf-8")[:_MAX_NAME_BYTES]
    return encoded.decode("utf-8", "ignore") or None


def filename_from_disposition(value: str | None) -> str | None:
    """The file name in a ``Content-Disposition`` header (``filename*`` wins, RFC 6266 §4.3)."""
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    plain: str | None = None
    extended: str | None = None
    # get_filename() would return the plain ``filename`` whenever both are
    # present: decoded RFC 2231 parameters (``filename*``) come back as
    # (charset, language, value) tuples, listed after the plain ones.
    for key, param in message.get_params(header="content-disposition", failobj=[])[1:]:
        if key.lower() != "filename":
            continue
        if isinstance(param, tuple):
            extended = extended or collapse_rfc2231_value(param)
        else:
            plain = plain or param
    return safe_name(extended) or safe_name(plain)


def filename_from_url(url: str) -> str | None:
    """The last non-empty segment of the URL path, percent-decoded."""
    path = urlsplit(url).path
    segments = [s for s in path.split("/") if s]
    return safe_name(unquote(segments[-1])) if segments else None


def resolve_output(
    directory: Path,
    output: str | os.PathLike[str] | None,
    *,
    candidates: tuple[str | None, ...] = (),
    confine: bool = True,
) -> Path:
    """The absolute path a download goes to.

    ``output`` (a path relative to ``directory``, or absolute) wins; else the
    first usable name in ``candidates``; else ``"download"``.  With
    ``confine`` the result must lie inside ``directory``.

    Raises:
        UnsafePathError: the path would lie outside ``directory``, or is a directory.
    """
    base = Path(directory).resolve()
    if output is not None and str(output) != "":
        target = (base / Path(output)).resolve()
    else:
        name = next((n for n in (safe_name(c) for c in candidates) if n), DEFAULT_NAME)
        target = (base / name).resolve()
    if confine and not target.is_relative_to(base):
        raise UnsafePathError(f"output path {str(output)!r} is outside the download directory {base}")
    if target == base or target.is_dir():
        raise UnsafePathError(f"output path {target} is a directory")
    return target
