"""The pure stream state machine: idleness, writer rules, end reasons, legal moves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamup.models import EndReason, FileIdentity, FileState, PartRecord, Status
from streamup.stream.lifecycle import (
    Activity,
    IllegalTransition,
    check_transition,
    contiguous_prefix,
    end_reason,
    idle_credit_s,
    parts_past_end,
    should_end,
)

ID = FileIdentity(1, 42)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def part(number: int, offset: int, size: int) -> PartRecord:
    return PartRecord(number, offset, size, f'"etag{number}"', "0" * 32, T0)


def test_activity_resets_when_size_or_mtime_moves_and_only_then() -> None:
    first = Activity.first(FileState(ID, 100, 5), now_s=10.0)
    assert first.observe(FileState(ID, 100, 5), now_s=20.0).idle_for_s(20.0) == 10.0
    assert first.observe(FileState(ID, 101, 5), now_s=20.0).idle_for_s(20.0) == 0.0
    # Same size, new mtime: the writer rewrote bytes in place; not idle.
    assert first.observe(FileState(ID, 100, 6), now_s=20.0).idle_for_s(21.0) == 1.0


@pytest.mark.parametrize(
    ("age_s", "credit_s"),
    [
        (0.0, 0.0),  # just written
        (-50.0, 0.0),  # mtime in the future (clock skew): no credit
        (10.0, 10.0),  # partly idle already
        (3600.0, 29.5),  # long finished: one confirmation interval still required
    ],
)
def test_idle_credit_from_the_mtime(age_s: float, credit_s: float) -> None:
    assert idle_credit_s(age_s, 30.0, confirm_s=0.5) == credit_s


def test_a_credited_file_still_needs_one_unchanged_look() -> None:
    state = FileState(ID, 100, 5)
    first = Activity.first(state, now_s=100.0, credit_s=idle_credit_s(3600.0, 30.0, 0.5))
    assert first.idle_for_s(100.0) < 30.0
    assert first.observe(state, now_s=100.5).idle_for_s(100.5) >= 30.0


@pytest.mark.parametrize(
    ("changed_s", "idle_s"),
    [
        (None, 0.0),  # when it changed is not known: now
        (104.0, 6.0),  # its mtime says 4 s after the last look at 100: idle since then
        (95.0, 10.0),  # an mtime before the last look (set back): no older than that look
        (120.0, 0.0),  # an mtime in the future (skew): now
    ],
)
def test_a_late_look_places_the_change_by_the_mtime_within_the_window(
    changed_s: float | None, idle_s: float
) -> None:
    """Seen at 100 growing, looked at again only at 110 (the loop was busy sending)."""
    seen = Activity.first(FileState(ID, 100, 5), now_s=100.0)
    later = seen.observe(FileState(ID, 200, 9), now_s=110.0, changed_s=changed_s)
    assert later.idle_for_s(110.0) == idle_s
    assert later.looked_at_s == 110.0


def test_an_unchanged_look_moves_only_the_last_look() -> None:
    seen = Activity.first(FileState(ID, 100, 5), now_s=100.0)
    again = seen.observe(FileState(ID, 100, 5), now_s=103.0, changed_s=50.0)
    assert (again.changed_at_s, again.looked_at_s) == (100.0, 103.0)


@pytest.mark.parametrize(
    ("idle_s", "seen", "now", "ends"),
    [
        (29.9, False, None, False),  # nothing visible: the idle timeout rules
        (30.0, False, None, True),
        (30.0, False, False, True),  # never saw a writer (another host): timeout
        (5.0, False, False, False),
        (0.9, True, False, False),  # the writer we saw has closed: a short confirmation
        (1.0, True, False, True),
        (30.0, True, True, False),  # still held open for writing: merely paused
        (299.0, True, True, False),
        (300.0, True, True, True),  # ... up to ten timeouts
    ],
)
def test_should_end(idle_s: float, seen: bool, now: bool | None, ends: bool) -> None:
    assert should_end(idle_s, 30.0, writer_seen=seen, writer_now=now) is ends


def test_short_timeouts_are_not_lengthened_by_the_writer_confirmation() -> None:
    assert should_end(0.5, 0.5, writer_seen=True, writer_now=False)


@pytest.mark.parametrize(
    ("path_state", "reason"),
    [
        (FileState(ID, 1, 1), EndReason.IDLE),
        (None, EndReason.FILE_DELETED),
        (FileState(FileIdentity(1, 43), 1, 1), EndReason.FILE_REPLACED),
    ],
)
def test_end_reason(path_state: FileState | None, reason: EndReason) -> None:
    assert end_reason(ID, path_state) is reason


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Status.ACTIVE, Status.PENDING_COMPLETION),
        (Status.PENDING_COMPLETION, Status.ACTIVE),
        (Status.PENDING_COMPLETION, Status.S3_COMPLETED),
        (Status.S3_COMPLETED, Status.COMPLETED),
        (Status.S3_COMPLETED, Status.FAILED_METADATA_UPLOAD),
        (Status.FAILED_METADATA_UPLOAD, Status.S3_COMPLETED),
        (Status.FAILED_METADATA_GENERATION, Status.COMPLETED),
        (Status.FAILED_S3_COMPLETE, Status.PENDING_COMPLETION),
        (Status.ACTIVE, Status.ACTIVE),
    ],
)
def test_legal_transitions(old: Status, new: Status) -> None:
    assert check_transition(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Status.ACTIVE, Status.COMPLETED),
        (Status.ACTIVE, Status.S3_COMPLETED),
        (Status.COMPLETED, Status.ACTIVE),
        (Status.S3_COMPLETED, Status.PENDING_COMPLETION),  # never complete twice
        (Status.FAILED_METADATA_UPLOAD, Status.ACTIVE),
        (Status.ABORTED_NO_PARTS, Status.ACTIVE),
    ],
)
def test_illegal_transitions_raise(old: Status, new: Status) -> None:
    with pytest.raises(IllegalTransition, match=old.value):
        check_transition(old, new)


def _legal(old: Status, new: Status) -> bool:
    try:
        check_transition(old, new)
    except IllegalTransition:
        return False
    return True


def test_every_status_but_the_final_ones_can_move_on() -> None:
    for status in Status:
        moves = [s for s in Status if s is not status and _legal(status, s)]
        assert bool(moves) is not status.is_final, status


def test_parts_past_end_of_a_shrunken_file() -> None:
    parts = [part(1, 0, 10), part(2, 10, 10), part(3, 20, 10)]
    assert parts_past_end(parts, 30) == []
    assert parts_past_end(parts, 25) == [3]
    assert parts_past_end(parts, 10) == [2, 3]
    assert parts_past_end(parts, 0) == [1, 2, 3]


def test_contiguous_prefix_stops_at_the_first_gap() -> None:
    parts = {1: part(1, 0, 10), 2: part(2, 10, 10), 4: part(4, 30, 10)}
    assert [p.number for p in contiguous_prefix(parts)] == [1, 2]
    assert contiguous_prefix({2: part(2, 10, 10)}) == []
