"""Range planning: pure arithmetic, no I/O.

A file of ``size`` bytes is cut into ``Range`` objects whose inclusive ends
follow HTTP (RFC 9110 §14.1.2: ``bytes=0-99`` is the first 100 bytes).  The
ranges cover ``[0, size)`` exactly, in order, without overlap.

Why the chunk size is chosen the way it is
------------------------------------------
* Small files should not be cut into many tiny ranges: every range costs a
  request, so ranges are never smaller than ``MIN_CHUNK`` (1 MiB) unless the
  file itself is smaller.
* Each connection should get several ranges, so a slow connection near the
  end is not left holding a large share of the file (the "tail" problem):
  aim at ``TARGET_RANGES_PER_CONNECTION`` ranges per connection.
* Huge files must not produce millions of ranges (resume records and Redis
  jobs grow with the count), so ranges grow until the count is at most
  ``MAX_RANGES``, and they are capped at ``MAX_CHUNK`` (64 MiB) where that
  cap does not break ``MAX_RANGES``.
* Chunk sizes are rounded to whole MiB above 1 MiB, which keeps requests
  aligned to page and filesystem blocks.
* A chunk size the user asks for is kept within bounds too: never below
  ``MIN_REQUESTED_CHUNK`` (64 KiB: at 1 KiB a 300 MB file is 300,000
  requests and a core busy for minutes just planning and recording them),
  and grown when the file would need more than ``MAX_RANGES`` ranges of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import UsageError

__all__ = [
    "MAX_CHUNK",
    "MAX_RANGES",
    "MIN_CHUNK",
    "MIN_REQUESTED_CHUNK",
    "Range",
    "check_chunk_size",
    "choose_chunk_size",
    "merge_ranges",
    "missing_ranges",
    "parse_size",
    "plan_ranges",
    "ranges_in",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MIN_CHUNK = 1 * MiB
MAX_CHUNK = 64 * MiB
MAX_RANGES = 10_000
MIN_REQUESTED_CHUNK = 64 * KiB
TARGET_RANGES_PER_CONNECTION = 4


@dataclass(frozen=True, order=True, slots=True)
class Range:
    """Bytes ``start`` to ``end`` of a file, both inclusive, as in an HTTP Range header."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1

    def header(self, offset: int = 0) -> str:
        """The ``Range`` header value for this range, skipping its first ``offset`` bytes."""
        return f"bytes={self.start + offset}-{self.end}"

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    @classmethod
    def parse(cls, text: str) -> Range:
        """Parse ``"START-END"`` as written by ``str(range)``.

        Raises:
            ValueError: the text is not two ordered non-negative integers.
        """
        start, sep, end = text.partition("-")
        if not sep or not start.isdigit() or not end.isdigit():
            raise ValueError(f"not a range: {text!r}")
        return cls(int(start), int(end))


def check_chunk_size(requested: int | None) -> int | None:
    """``requested`` (a chunk size the user asked for, or ``None``) if it is not below the floor.

    Raises:
        UsageError: it is below ``MIN_REQUESTED_CHUNK``.
    """
    if requested is not None and requested < MIN_REQUESTED_CHUNK:
        shown = f"{requested // KiB}K" if requested % KiB == 0 else f"{requested} bytes"
        raise UsageError(
            f"chunk size {shown} is too small: use at least {MIN_REQUESTED_CHUNK // KiB}K "
            "(--chunk-size, RANGEFETCH_CHUNK_SIZE)"
        )
    return requested


def choose_chunk_size(
    size: int,
    connections: int,
    *,
    per_connection: int = TARGET_RANGES_PER_CONNECTION,
    requested: int | None = None,
) -> int:
    """Pick a range length for a file of ``size`` bytes fetched over ``connections``.

    ``per_connection``: the ranges each connection should get (before the
    bounds above apply).  ``requested``: the chunk size the user asked for;
    it is used as it is unless the file would need more than ``MAX_RANGES``
    ranges of it, and then grown to the smallest multiple of
    ``MIN_REQUESTED_CHUNK`` that keeps within ``MAX_RANGES``.

    Raises:
        ValueError: ``size`` is negative, or ``connections`` or ``per_connection`` is below 1.
        UsageError: ``requested`` is below ``MIN_REQUESTED_CHUNK``.
    """
    if size < 0 or connections < 1 or per_connection < 1:
        raise ValueError("size must be >= 0, connections and per_connection >= 1")
    if requested is not None:
        check_chunk_size(requested)
        if -(-size // requested) <= MAX_RANGES:
            return requested
        fits = -(-size // MAX_RANGES)
        return -(-fits // MIN_REQUESTED_CHUNK) * MIN_REQUESTED_CHUNK
    if size <= MIN_CHUNK:
        return max(size, 1)
    chunk = -(-size // (connections * per_connection))
    chunk = max(MIN_CHUNK, min(chunk, MAX_CHUNK))
    chunk = max(chunk, -(-size // MAX_RANGES))
    return -(-chunk // MiB) * MiB


def plan_ranges(size: int, chunk_size: int, *, skip: Iterable[Range] = ()) -> list[Range]:
    """Cut ``[0, size)`` into consecutive ranges of ``chunk_size`` bytes (the last may be shorter).

    Ranges listed in ``skip`` (already done) are left out.  A size of 0 gives
    no ranges: an empty file needs no request.

    Raises:
        ValueError: ``size`` is negative or ``chunk_size`` is below 1.
    """
    if size < 0 or chunk_size < 1:
        raise ValueError("size must be >= 0 and chunk_size >= 1")
    done = set(skip)
    return [r for r in _cut(size, chunk_size) if r not in done]


def ranges_in(span: Range, chunk_size: int) -> list[Range]:
    """The planned ranges of ``chunk_size`` bytes that make up ``span`` (which starts where a range does).

    A distributed range job covers a run of consecutive ranges (a job cell)
    and fetches each in turn: the same ranges ``plan_ranges`` cut.
    """
    if chunk_size < 1 or span.start % chunk_size:
        raise ValueError("span must start at a multiple of chunk_size >= 1")
    return [Range(s, min(s + chunk_size - 1, span.end)) for s in range(span.start, span.end + 1, chunk_size)]


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """``ranges`` as the fewest ranges covering the same bytes, in order (overlapping or adjacent ones join)."""
    merged: list[Range] = []
    for r in sorted(ranges):
        if merged and r.start <= merged[-1].end + 1:
            if r.end > merged[-1].end:
                merged[-1] = Range(merged[-1].start, r.end)
        else:
            merged.append(r)
    return merged


def missing_ranges(size: int, chunk_size: int, done: Iterable[Range]) -> list[Range]:
    """The bytes of ``[0, size)`` not in ``done``, cut into ranges at multiples of ``chunk_size``.

    ``done`` may hold any ranges (a resume record keeps partly fetched
    ranges too): each gap is cut where the plan of ``plan_ranges`` would cut,
    so a gap that starts inside a planned range first finishes that range.
    With nothing done this is ``plan_ranges(size, chunk_size)``.

    Raises:
        ValueError: ``size`` is negative or ``chunk_size`` is below 1.
    """
    if size < 0 or chunk_size < 1:
        raise ValueError("size must be >= 0 and chunk_size >= 1")
    todo: list[Range] = []
    cursor = 0
    for r in [*merge_ranges(r for r in done if r.start < size), Range(size, size)]:
        gap_end = min(r.start, size)  # exclusive
        while cursor < gap_end:
            cut = min(gap_end, (cursor // chunk_size + 1) * chunk_size)
            todo.append(Range(cursor, cut - 1))
            cursor = cut
        cursor = max(cursor, r.end + 1)
    return todo


def _cut(size: int, chunk_size: int) -> Iterator[Range]:
    for start in range(0, size, chunk_size):
        yield Range(start, min(start + chunk_size, size) - 1)


# "4", "4b", "4k", "4kb", "4ki", "4kib" (any case); an "i" needs a unit before it.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kmgt])(?:ib?|b)?|b)?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str | int) -> int:
    """Parse a byte count such as ``"4M"``, ``"512KiB"`` or ``"1048576"`` (binary units).

    Raises:
        UsageError: the text is not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        # Settings pass values through untyped: a float must fail here, not with a TypeError.
        match = _SIZE_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise UsageError(f"invalid size {text!r}: use a number with an optional K, M, G or T suffix")
        value = int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if value < 1:
        raise UsageError(f"invalid size {text!r}: must be at least 1 byte")
    return value
