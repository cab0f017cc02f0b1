"""The part planner: S3's limits, offsets that follow part numbers, the 5 TiB reach."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamup.s3.parts import (
    MAX_OBJECT_SIZE_BYTES,
    MAX_PART_SIZE_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE_BYTES,
    PARTS_PER_TIER,
    MiB,
    PartSchedule,
    final_layout,
    whole_parts_ready,
)

bases = st.integers(MIN_PART_SIZE_BYTES, MAX_PART_SIZE_BYTES)


@pytest.mark.parametrize(
    ("base", "fixed", "number", "size", "offset"),
    [
        (10 * MiB, False, 1, 10 * MiB, 0),
        (10 * MiB, False, 2, 10 * MiB, 10 * MiB),
        (10 * MiB, False, PARTS_PER_TIER, 10 * MiB, (PARTS_PER_TIER - 1) * 10 * MiB),
        (10 * MiB, False, PARTS_PER_TIER + 1, 20 * MiB, PARTS_PER_TIER * 10 * MiB),
        (10 * MiB, False, PARTS_PER_TIER + 2, 20 * MiB, PARTS_PER_TIER * 10 * MiB + 20 * MiB),
        (10 * MiB, True, 9_999, 10 * MiB, 9_998 * 10 * MiB),
        (5 * 1024 * MiB, False, 5_000, MAX_PART_SIZE_BYTES, 4_999 * MAX_PART_SIZE_BYTES),
    ],
)
def test_schedule_table(base: int, fixed: bool, number: int, size: int, offset: int) -> None:
    schedule = PartSchedule(base, fixed)
    assert schedule.size_of(number) == size
    assert schedule.offset_of(number) == offset
    assert schedule.number_at(offset) == number
    assert schedule.number_at(offset + size - 1) == number


@pytest.mark.parametrize("base", [MIN_PART_SIZE_BYTES - 1, MAX_PART_SIZE_BYTES + 1, 0])
def test_schedule_rejects_part_sizes_outside_s3_limits(base: int) -> None:
    with pytest.raises(ValueError, match="outside S3's limits"):
        PartSchedule(base)


@pytest.mark.parametrize("number", [0, MAX_PARTS + 1])
def test_part_numbers_outside_1_to_10000_are_refused(number: int) -> None:
    with pytest.raises(ValueError, match="part number"):
        PartSchedule(10 * MiB).size_of(number)


@given(bases)
def test_growing_schedule_reaches_5_tib_within_10000_parts(base: int) -> None:
    assert PartSchedule(base).capacity_bytes == MAX_OBJECT_SIZE_BYTES


def test_fixed_schedule_capacity_is_10000_equal_parts() -> None:
    assert PartSchedule(10 * MiB, fixed=True).capacity_bytes == MAX_PARTS * 10 * MiB


@given(bases, st.booleans(), st.integers(1, MAX_PARTS - 1))
def test_parts_are_contiguous_and_within_limits(base: int, fixed: bool, number: int) -> None:
    schedule = PartSchedule(base, fixed)
    span, following = schedule.span(number), schedule.span(number + 1)
    assert following.offset_bytes == span.end_bytes
    assert MIN_PART_SIZE_BYTES <= span.size_bytes <= MAX_PART_SIZE_BYTES
    assert span.size_bytes <= following.size_bytes


@given(bases, st.booleans(), st.integers(0, 200 * 1024 * MiB))
def test_final_layout_covers_file_exactly(base: int, fixed: bool, size: int) -> None:
    schedule = PartSchedule(base, fixed)
    size = min(size, schedule.capacity_bytes)
    spans = final_layout(schedule, size)
    assert sum(s.size_bytes for s in spans) == size
    assert [s.number for s in spans] == list(range(1, len(spans) + 1))
    for span in spans[:-1]:
        assert span.size_bytes >= MIN_PART_SIZE_BYTES
        assert span == schedule.span(span.number)
    if spans:
        assert spans[-1].offset_bytes == schedule.offset_of(spans[-1].number)


def test_final_layout_of_an_empty_file_has_no_parts() -> None:
    assert final_layout(PartSchedule(5 * MiB), 0) == []


def test_final_layout_refuses_files_beyond_the_schedule_capacity() -> None:
    schedule = PartSchedule(5 * MiB, fixed=True)
    with pytest.raises(ValueError, match="exceed"):
        final_layout(schedule, schedule.capacity_bytes + 1)


@given(bases, st.booleans(), st.integers(0, 100 * 1024 * MiB), st.sets(st.integers(1, 40)))
def test_whole_parts_ready_never_sends_a_partial_part(
    base: int, fixed: bool, size: int, done: set[int]
) -> None:
    schedule = PartSchedule(base, fixed)
    ready = whole_parts_ready(schedule, size, done, limit=50)
    for span in ready:
        assert span.end_bytes <= size
        assert span.number not in done
        assert span == schedule.span(span.number)
    assert len(ready) <= 50


def test_whole_parts_ready_waits_for_a_whole_part() -> None:
    schedule = PartSchedule(5 * MiB)
    assert whole_parts_ready(schedule, 5 * MiB - 1, set(), limit=8) == []
    assert [s.number for s in whole_parts_ready(schedule, 5 * MiB, set(), limit=8)] == [1]
    assert [s.number for s in whole_parts_ready(schedule, 16 * MiB, {2}, limit=8)] == [1, 3]
    assert [s.number for s in whole_parts_ready(schedule, 50 * MiB, set(), limit=3)] == [1, 2, 3]
