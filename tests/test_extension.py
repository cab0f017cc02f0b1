"""The pure decisions of an extension (stream.extension): may a grown completed file extend its
object, and how the extended object's parts are laid out (copied ranges, then the schedule)."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamup.models import CompletedRecord, EndReason, Extension, FileIdentity, FileState, Status
from streamup.s3.parts import (
    MAX_PART_SIZE_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE_BYTES,
    GiB,
    MiB,
    PartSchedule,
    PartSpan,
    final_layout,
    whole_parts_ready,
)
from streamup.stream.extension import (
    ExtendedLayout,
    copy_proven,
    copy_spans,
    plan_extension,
    worth_checking,
)

IDENTITY = FileIdentity(2049, 77)
DONE = CompletedRecord(
    stream_id="old", path="/w/cam.mp4", bucket="b", key="streams/old/cam.mp4",
    status=Status.COMPLETED, identity=IDENTITY, size_bytes=12 * MiB, mtime_ns=5,
    completed_at=datetime(2026, 1, 1, tzinfo=UTC), sha256_hex="ab" * 32,
    object_etag='"0f-3"',
)  # fmt: skip
GROWN = FileState(IDENTITY, 18 * MiB, 9)
SCHEDULE = PartSchedule(5 * MiB)


@pytest.mark.parametrize(
    ("change", "state", "expected"),
    [
        ({}, GROWN, True),
        ({}, FileState(IDENTITY, 12 * MiB, 9), False),  # not longer: rewritten, not grown
        ({}, FileState(IDENTITY, 11 * MiB, 9), False),  # shrank
        ({}, FileState(FileIdentity(2049, 78), 18 * MiB, 9), False),  # another file
        ({"status": Status.ABORTED_NO_PARTS}, GROWN, False),
        ({"end_reason": EndReason.FILE_LOST}, GROWN, False),  # the object is partial
        ({"sha256_hex": ""}, GROWN, False),  # an unproven object: nothing to compare with
        ({"key": ""}, GROWN, False),
    ],
)
def test_only_a_longer_same_file_of_a_normally_completed_stream_is_worth_checking(
    change: dict[str, object], state: FileState, expected: bool
) -> None:
    assert worth_checking(dataclasses.replace(DONE, **change), state) is expected  # type: ignore[arg-type]
    assert worth_checking(None, state) is False


def test_an_unchanged_prefix_under_the_same_object_is_an_extension() -> None:
    plan = plan_extension(DONE, SCHEDULE, remote=(12 * MiB, '"0f-3"'), prefix_sha256="ab" * 32)
    assert plan == Extension("old", 12 * MiB, '"0f-3"', count=1)
    again = dataclasses.replace(DONE, extensions=2)
    assert plan_extension(
        again, SCHEDULE, remote=(12 * MiB, '"0f-3"'), prefix_sha256="ab" * 32
    ) == (Extension("old", 12 * MiB, '"0f-3"', count=3))


@pytest.mark.parametrize(
    ("remote", "sha", "why"),
    [
        ((12 * MiB, '"0f-3"'), "cd" * 32, "prefix changed"),
        ((12 * MiB, '"0f-3"'), None, "prefix changed"),  # the file is shorter now
        (None, "ab" * 32, "gone"),
        ((13 * MiB, '"0f-3"'), "ab" * 32, "holds 13631488 bytes"),
        ((12 * MiB, '"ee-3"'), "ab" * 32, "another object"),
    ],
)
def test_anything_else_is_a_new_stream_with_the_reason(
    remote: tuple[int, str] | None, sha: str | None, why: str
) -> None:
    plan = plan_extension(DONE, SCHEDULE, remote=remote, prefix_sha256=sha)
    assert isinstance(plan, str) and why in plan


def test_an_object_of_more_parts_than_s3_allows_is_a_new_stream() -> None:
    huge = dataclasses.replace(DONE, size_bytes=60 * GiB)  # 12,288 parts of a fixed 5 MiB
    plan = plan_extension(huge, PartSchedule(5 * MiB, fixed=True), remote=(60 * GiB, '"0f-3"'),
                          prefix_sha256="ab" * 32)  # fmt: skip
    assert isinstance(plan, str) and "more parts" in plan


def test_without_a_known_etag_the_size_and_the_prefix_decide() -> None:
    done = dataclasses.replace(DONE, object_etag="")  # MD5s not kept (checksum mode)
    plan = plan_extension(done, SCHEDULE, remote=(12 * MiB, '"any"'), prefix_sha256="ab" * 32)
    assert isinstance(plan, Extension) and plan.etag == '"any"'


@pytest.mark.parametrize(
    ("prefix", "sizes"),
    [
        (12 * MiB, [5 * MiB, 7 * MiB]),  # the short tail joins the last whole part
        (10 * MiB, [5 * MiB, 5 * MiB]),
        (6 * MiB, [6 * MiB]),
        (5 * MiB, [5 * MiB]),
        (5 * MiB - 1, []),  # under S3's minimum for a part that is not the last: sent again
    ],
)
def test_copy_spans_cover_the_completed_object(prefix: int, sizes: list[int]) -> None:
    assert [s.size_bytes for s in copy_spans(prefix, SCHEDULE)] == sizes


def test_a_prefix_shorter_than_one_part_but_over_5_mib_is_one_copy() -> None:
    assert copy_spans(7 * MiB, PartSchedule(16 * MiB)) == (PartSpan(1, 0, 7 * MiB),)


def test_a_merged_last_copy_over_5_gib_is_split_in_two() -> None:
    spans = copy_spans(5 * GiB + 3 * MiB, PartSchedule(5 * GiB))
    assert [s.size_bytes for s in spans] == [(5 * GiB + 3 * MiB) // 2] * 2


@settings(deadline=None)  # up to 10,000 spans per example: no timing on a shared machine
@given(
    prefix=st.integers(0, 200 * GiB),
    base=st.sampled_from([5 * MiB, 8 * MiB, 64 * MiB, 5 * GiB]),
    fixed=st.booleans(),
)
def test_copies_are_contiguous_legal_parts_of_the_whole_prefix(
    prefix: int, base: int, fixed: bool
) -> None:
    spans = copy_spans(prefix, PartSchedule(base, fixed))
    if prefix < MIN_PART_SIZE_BYTES:
        assert spans == ()
        return
    if len(spans) >= MAX_PARTS:
        return  # more parts than S3 allows: plan_extension refuses it (a new stream)
    assert [s.number for s in spans] == list(range(1, len(spans) + 1))
    assert spans[0].offset_bytes == 0 and spans[-1].end_bytes == prefix
    for before, after in itertools.pairwise(spans):
        assert before.end_bytes == after.offset_bytes
    assert all(MIN_PART_SIZE_BYTES <= s.size_bytes <= MAX_PART_SIZE_BYTES for s in spans)


def test_the_extended_layout_continues_the_schedule_after_the_copies() -> None:
    layout = ExtendedLayout.of(Extension("old", 12 * MiB, '"e"'), SCHEDULE)
    assert layout.copied_bytes == 12 * MiB and layout.is_copy(2) and not layout.is_copy(3)
    assert layout.span(3) == PartSpan(3, 12 * MiB, 5 * MiB)
    assert whole_parts_ready(layout, 18 * MiB, set(), limit=10) == [
        PartSpan(1, 0, 5 * MiB), PartSpan(2, 5 * MiB, 7 * MiB), PartSpan(3, 12 * MiB, 5 * MiB),
    ]  # fmt: skip
    assert final_layout(layout, 18 * MiB)[-1] == PartSpan(4, 17 * MiB, MiB)
    assert layout.capacity_bytes > 12 * MiB + 9_000 * 5 * MiB


def test_a_small_completed_object_is_laid_out_by_the_schedule_alone() -> None:
    layout = ExtendedLayout.of(Extension("old", 3 * MiB, '"e"'), SCHEDULE)
    assert not layout.is_copy(1) and layout.span(2) == SCHEDULE.span(2)


def test_a_copy_is_proven_by_the_digests_the_server_reports() -> None:
    ok = {"etag_hex": "aa", "crc32c_b64": "Zm9v", "md5_hex": "aa", "local_crc32c_b64": "Zm9v"}
    assert copy_proven(**ok) is None  # type: ignore[arg-type]
    assert "CRC32C" in (copy_proven(**{**ok, "crc32c_b64": "YmFy"}) or "")  # type: ignore[arg-type]
    assert "ETag" in (copy_proven(**{**ok, "etag_hex": "bb"}) or "")  # type: ignore[arg-type]
    # A server that reports neither (ETags that are not MD5s, no CRC32C) proves nothing either way.
    assert copy_proven(etag_hex="x", crc32c_b64=None, md5_hex=None, local_crc32c_b64="Zm9v") is None
