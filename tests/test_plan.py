"""Range planning: pure arithmetic, checked with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangefetch import Range, UsageError, choose_chunk_size, parse_size, plan_ranges
from rangefetch.plan import MAX_CHUNK, MAX_RANGES, MIN_CHUNK, MIN_REQUESTED_CHUNK, KiB, MiB, check_chunk_size

PiB = 1024**5


@st.composite
def plans(draw: st.DrawFn, min_size: int = 0) -> tuple[int, int]:
    """A (size, chunk) pair with at most a few thousand ranges, so each example stays fast."""
    size = draw(st.integers(min_value=min_size, max_value=10**9))
    chunk = draw(st.integers(min_value=max(1, size // 2000), max_value=max(1, size // 2000) + 10**6))
    return size, chunk


def count(size: int, chunk: int) -> int:
    return -(-size // chunk)


# --- plan_ranges --------------------------------------------------------------


@given(plans())
def test_ranges_cover_the_file_exactly(plan: tuple[int, int]) -> None:
    size, chunk = plan
    ranges = plan_ranges(size, chunk)
    assert len(ranges) == count(size, chunk)
    position = 0
    for rng in ranges:
        assert rng.start == position  # in order, no gap, no overlap
        assert rng.end >= rng.start  # inclusive end: at least one byte
        position = rng.end + 1
    assert position == size
    assert sum(r.length for r in ranges) == size


@given(plans(min_size=1))
def test_every_range_but_the_last_is_one_chunk(plan: tuple[int, int]) -> None:
    size, chunk = plan
    ranges = plan_ranges(size, chunk)
    assert all(r.length == chunk for r in ranges[:-1])
    assert 1 <= ranges[-1].length <= chunk
    assert ranges[-1].end == size - 1


@given(plans(), st.data())
def test_skip_leaves_out_exactly_the_done_ranges(plan: tuple[int, int], data: st.DataObject) -> None:
    size, chunk = plan
    full = plan_ranges(size, chunk)
    done = data.draw(st.sets(st.sampled_from(full)) if full else st.just(set()))
    rest = plan_ranges(size, chunk, skip=done)
    assert rest == [r for r in full if r not in done]
    assert sorted([*rest, *done]) == full


def test_skip_ignores_ranges_that_are_not_in_the_plan() -> None:
    assert plan_ranges(10, 4, skip=[Range(0, 2), Range(100, 200)]) == [Range(0, 3), Range(4, 7), Range(8, 9)]


def test_size_zero_needs_no_range() -> None:
    assert plan_ranges(0, 1) == []
    assert plan_ranges(0, MiB) == []


def test_known_plans() -> None:
    assert plan_ranges(1, 1) == [Range(0, 0)]
    assert plan_ranges(17, 5) == [Range(0, 4), Range(5, 9), Range(10, 14), Range(15, 16)]
    assert plan_ranges(10, 100) == [Range(0, 9)]


@pytest.mark.parametrize(("size", "chunk"), [(-1, 1), (10, 0), (10, -5)])
def test_plan_rejects_bad_arguments(size: int, chunk: int) -> None:
    with pytest.raises(ValueError):
        plan_ranges(size, chunk)


# --- choose_chunk_size --------------------------------------------------------


@given(size=st.integers(min_value=0, max_value=PiB), connections=st.integers(min_value=1, max_value=256))
def test_chunk_size_respects_the_limits(size: int, connections: int) -> None:
    chunk = choose_chunk_size(size, connections)
    assert chunk >= 1
    # Never smaller than MIN_CHUNK, unless the whole file is.
    assert chunk >= min(MIN_CHUNK, max(size, 1))
    # Never more than MAX_RANGES ranges.
    assert count(size, chunk) <= MAX_RANGES
    if chunk > MAX_CHUNK:
        # Only as large as MAX_RANGES forces: one MiB less would break it.
        assert count(size, chunk - MiB) > MAX_RANGES
    if size > MIN_CHUNK:
        assert chunk % MiB == 0


@given(size=st.integers(min_value=MIN_CHUNK + 1, max_value=64 * 1024 * MiB), connections=st.integers(1, 64))
def test_chunk_size_gives_each_connection_several_ranges_when_it_can(size: int, connections: int) -> None:
    chunk = choose_chunk_size(size, connections)
    ideal = count(size, connections * 4)
    if MIN_CHUNK <= ideal <= MAX_CHUNK - MiB:
        assert ideal <= chunk < ideal + MiB


def test_chunk_size_examples() -> None:
    assert choose_chunk_size(0, 4) == 1
    assert choose_chunk_size(17, 4) == 17
    assert choose_chunk_size(MIN_CHUNK, 16) == MIN_CHUNK
    assert choose_chunk_size(MIN_CHUNK + 1, 16) == MIN_CHUNK
    assert choose_chunk_size(1024 * MiB, 16) == 16 * MiB
    assert choose_chunk_size(1024 * MiB, 16, per_connection=8) == 8 * MiB  # distributed mode's default
    assert choose_chunk_size(1024 * 1024 * MiB, 1) == 105 * MiB  # 1 TiB: MAX_RANGES wins over MAX_CHUNK
    assert count(PiB, choose_chunk_size(PiB, 16)) <= MAX_RANGES


@pytest.mark.parametrize(("size", "connections", "per_connection"), [(-1, 1, 4), (10, 0, 4), (10, 1, 0)])
def test_chunk_size_rejects_bad_arguments(size: int, connections: int, per_connection: int) -> None:
    with pytest.raises(ValueError):
        choose_chunk_size(size, connections, per_connection=per_connection)


# --- a chunk size the user asked for -------------------------------------------------


@given(
    size=st.integers(min_value=0, max_value=PiB),
    requested=st.integers(min_value=MIN_REQUESTED_CHUNK, max_value=4 * 1024 * MiB),
    connections=st.integers(min_value=1, max_value=256),
)
def test_a_requested_chunk_size_is_kept_unless_it_makes_too_many_ranges(
    size: int, requested: int, connections: int
) -> None:
    chunk = choose_chunk_size(size, connections, requested=requested)
    assert count(size, chunk) <= MAX_RANGES
    if count(size, requested) <= MAX_RANGES:
        assert chunk == requested
    else:
        # Grown as little as the cap needs, in whole multiples of the floor.
        assert chunk > requested and chunk % MIN_REQUESTED_CHUNK == 0
        assert count(size, chunk - MIN_REQUESTED_CHUNK) > MAX_RANGES


def test_requested_chunk_size_examples() -> None:
    assert choose_chunk_size(100 * MiB, 16, requested=64 * KiB) == 64 * KiB  # 1,600 ranges: kept
    assert choose_chunk_size(300 * 10**6, 16, requested=64 * KiB) == 64 * KiB  # 4,578 ranges
    # 100 GiB at 64 KiB would be 1,638,400 ranges: 9,991 of 10.25 MiB (a multiple of 64 KiB) instead.
    assert choose_chunk_size(100 * 1024 * MiB, 16, requested=64 * KiB) == 10496 * KiB
    assert count(100 * 1024 * MiB, 10496 * KiB) == 9991


@pytest.mark.parametrize("requested", [1, 1024, MIN_REQUESTED_CHUNK - 1])
def test_a_requested_chunk_size_below_the_floor_is_a_usage_error(requested: int) -> None:
    with pytest.raises(UsageError, match="too small: use at least 64K") as info:
        check_chunk_size(requested)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        choose_chunk_size(10 * MiB, 4, requested=requested)


def test_check_chunk_size_passes_what_is_fine() -> None:
    assert check_chunk_size(None) is None
    assert check_chunk_size(MIN_REQUESTED_CHUNK) == MIN_REQUESTED_CHUNK
    with pytest.raises(UsageError, match="chunk size 1K is too small"):
        check_chunk_size(1024)
    with pytest.raises(UsageError, match="chunk size 1000 bytes is too small"):
        check_chunk_size(1000)


# --- Range ----------------------------------------------------------------------


def test_range_header_and_length() -> None:
    rng = Range(100, 199)
    assert rng.length == 100
    assert rng.header() == "bytes=100-199"
    assert rng.header(40) == "bytes=140-199"
    assert str(rng) == "100-199"
    assert Range(0, 0).length == 1


@given(start=st.integers(0, 2**60), length=st.integers(1, 2**60))
def test_range_parse_round_trip(start: int, length: int) -> None:
    rng = Range(start, start + length - 1)
    assert Range.parse(str(rng)) == rng
    assert rng.header() == f"bytes={rng}"


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (0, -1)])
def test_invalid_range_raises(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        Range(start, end)


@pytest.mark.parametrize("text", ["", "5", "5-", "-5", "1-2-3", "a-b", "3-1", " 1-2", "1 - 2", "0x1-0x2"])
def test_range_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Range.parse(text)


def test_range_is_frozen_and_ordered() -> None:
    rng = Range(1, 2)
    with pytest.raises(AttributeError):
        rng.start = 5  # type: ignore[misc]
    assert sorted([Range(5, 6), Range(0, 4)]) == [Range(0, 4), Range(5, 6)]


# --- parse_size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4M", 4 * MiB),
        ("512KiB", 512 * 1024),
        ("1g", 1024 * MiB),
        ("1048576", MiB),
        ("1t", 1024 * 1024 * MiB),
        ("8mb", 8 * MiB),
        ("2Mi", 2 * MiB),
        ("10b", 10),
        (" 3 k ", 3 * 1024),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "M", "4X", "4 M B", "1.5M", "-1", "0", "0k", "5i", "5ib", "four", "٣", 0, -3, 1.5, None]
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
