"""Choosing the output file name, and keeping it inside the download directory.

A name that comes from the network (Content-Disposition, RFC 6266, or the
URL path) is reduced to a plain file name: no directory part, no ``..``, no
control characters, no bidirectional controls.  Whatever the name, the
result must resolve inside the chosen directory, or the request is refused.

A name the user gives is checked before anything is fetched: a path that
ends in ``/`` names a directory, and a name too long for the file system
(with ``.part.json.tmp`` beside it) can never be written.
"""

from __future__ import annotations

import os
import re
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import UnsafePathError, UsageError

__all__ = ["filename_from_disposition", "filename_from_url", "resolve_output", "safe_name"]

DEFAULT_NAME = "download"
NAME_MAX = 255  # bytes in one file name on Linux file systems (ext4, xfs, btrfs, tmpfs)
PATH_MAX = 4096  # bytes in a path, with its terminating NUL
LONGEST_SUFFIX = ".part.json.tmp"  # the longest name rangefetch writes beside the output
_MAX_NAME_BYTES = NAME_MAX - len(LONGEST_SUFFIX)
# What makes a name lie about itself on a terminal or in a file manager: C0
# and C1 controls (ESC, and CSI U+009B, start terminal escape sequences),
# bidirectional controls (U+202E shows "invoice\u202etxt.exe" as
# "invoiceexe.txt", CVE-2021-42574), and the line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


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
        UnsafePathError: the path would lie outside ``directory``, or is a
            directory (or ends in ``/``, which names one).
        UsageError: a name in the path is too long for the file system,
            counting the ``.part.json.tmp`` suffix of the files kept beside it.
    """
    base = _resolve(Path(directory))
    if output is not None and str(output) != "":
        text = os.fspath(output)
        if os.path.basename(text) in ("", "."):  # "new/" or "new/.": pathlib would drop the "/" and "."
            raise UnsafePathError(
                f"output path {text!r} names a directory: use -d {os.path.dirname(text) or '.'} "
                "to save in it under the name the server suggests, or give a file name"
            )
        _check_lengths(Path(text))
        target = _resolve(base / text)
    else:
        name = next((n for n in (safe_name(c) for c in candidates) if n), DEFAULT_NAME)
        target = _resolve(base / name)
    _check_lengths(target)
    if confine and not target.is_relative_to(base):
        raise UnsafePathError(f"output path {str(output)!r} is outside the download directory {base}")
    try:
        is_dir = target == base or target.is_dir()
    except OSError as exc:
        raise UsageError(f"output path {target} cannot be used: {exc.strerror}") from exc
    if is_dir:
        raise UnsafePathError(f"output path {target} is a directory")
    return target


def _resolve(path: Path) -> Path:
    """``path`` made absolute with its symlinks resolved.

    Raises:
        UsageError: a symlink loop, or a path the system refuses to look at.
    """
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: pathlib's "Symlink loop from ..."
        raise UsageError(f"output path {str(path)!r} cannot be used: {getattr(exc, 'strerror', None) or exc}") from exc


def _check_lengths(path: Path) -> None:
    """Refuse a path the file system can never hold: a name past ``NAME_MAX``, a path past ``PATH_MAX``.

    The last name gets ``LONGEST_SUFFIX`` added: ``NAME.part.json.tmp``
    must fit as well as ``NAME``.

    Raises:
        UsageError: a name or the whole path is too long.
    """
    names = path.parts
    for i, name in enumerate(names):
        size = len(os.fsencode(name)) + (len(LONGEST_SUFFIX) if i == len(names) - 1 else 0)
        if size > NAME_MAX:
            shown = name if len(name) <= 40 else f"{name[:37]}..."
            if i == len(names) - 1:
                limit = f"at most {_MAX_NAME_BYTES} bytes, to leave room for {LONGEST_SUFFIX!r} beside it"
            else:
                limit = f"at most {NAME_MAX} bytes"
            raise UsageError(f"output name {shown!r} is {len(os.fsencode(name))} bytes long: {limit}")
    if len(os.fsencode(str(path))) + len(LONGEST_SUFFIX) >= PATH_MAX:
        raise UsageError(f"output path is too long: at most {PATH_MAX - 1 - len(LONGEST_SUFFIX)} bytes")
