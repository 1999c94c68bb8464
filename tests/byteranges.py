"""Byte-range arithmetic for test assertions, kept apart from the code under test."""

from __future__ import annotations

from collections.abc import Iterable

Span = tuple[int, int]  # (start, end), both inclusive, as in a Range header


def merged(spans: Iterable[Span]) -> list[Span]:
    """The fewest inclusive spans covering the same bytes as ``spans``."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def total(spans: Iterable[Span]) -> int:
    """How many distinct bytes ``spans`` cover."""
    return sum(end - start + 1 for start, end in merged(spans))


def overlap(a: Iterable[Span], b: Iterable[Span]) -> int:
    """How many bytes lie in both ``a`` and ``b``."""
    left, right = merged(a), merged(b)
    return total(left) + total(right) - total([*left, *right])


def within(inner: Iterable[Span], outer: Iterable[Span]) -> bool:
    """Whether every byte of ``inner`` is in ``outer``."""
    inner = list(inner)
    return overlap(inner, outer) == total(inner)
