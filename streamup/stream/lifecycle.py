"""Pure decisions about a stream's life: when it is idle, why it ended, which moves are legal.

Time is an argument (`now_s`, a monotonic reading), so every rule is tested with tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from streamup.models import EndReason, FileIdentity, FileState, PartRecord, ReadMark, Status


class IllegalTransition(RuntimeError):
    """A status change the state machine does not allow: a bug, never weather."""


_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.ACTIVE: frozenset({Status.PENDING_COMPLETION, Status.ABORTED_NO_PARTS}),
    Status.PENDING_COMPLETION: frozenset(
        {Status.ACTIVE, Status.S3_COMPLETED, Status.FAILED_S3_COMPLETE, Status.ABORTED_NO_PARTS}
    ),
    Status.FAILED_S3_COMPLETE: frozenset(
        {Status.ACTIVE, Status.PENDING_COMPLETION, Status.ABORTED_NO_PARTS}
    ),
    Status.S3_COMPLETED: frozenset(
        {
            Status.COMPLETED,
            Status.FAILED_METADATA_GENERATION,
            Status.FAILED_METADATA_UPLOAD,
            Status.FAILED_FINALIZATION_META,
        }
    ),
    Status.COMPLETED: frozenset(),
    Status.ABORTED_NO_PARTS: frozenset(),
}
for _failed in (
    Status.FAILED_METADATA_GENERATION,
    Status.FAILED_METADATA_UPLOAD,
    Status.FAILED_FINALIZATION_META,
):
    # A metadata failure is retried: back to s3_completed, never to a second completion.
    _ALLOWED[_failed] = _ALLOWED[Status.S3_COMPLETED] | {Status.S3_COMPLETED}


def check_transition(old: Status, new: Status) -> Status:
    """Return `new` when the move is legal (staying put always is); raise otherwise."""
    if old != new and new not in _ALLOWED[old]:
        raise IllegalTransition(f"a stream cannot go from {old.value} to {new.value}")
    return new


@dataclass(frozen=True, slots=True)
class Activity:
    """What the file looked like when it last changed, and when (monotonic seconds)."""

    size_bytes: int
    mtime_ns: int
    changed_at_s: float

    @classmethod
    def first(cls, state: FileState, now_s: float, *, credit_s: float = 0.0) -> Activity:
        """The first look at a file; `credit_s` of idleness already granted (see idle_credit_s)."""
        return cls(state.size_bytes, state.mtime_ns, now_s - credit_s, now_s)

    looked_at_s: float = float("-inf")  # the last look that found it like this

    def observe(
        self, state: FileState, now_s: float, *, changed_s: float | None = None
    ) -> Activity:
        """A file is unchanged only when both size and mtime are; either one moving resets it.

        The change happened since the last look: `changed_s` (when the file says it changed, its
        mtime on this clock, for a local file) places it within that window, else it counts as
        now. A look that comes late (the loop was busy sending a backlog) then does not make a
        file that stopped changing long ago look fresh.
        """
        if state.size_bytes == self.size_bytes and state.mtime_ns == self.mtime_ns:
            return dataclasses.replace(self, looked_at_s=now_s)
        at = now_s if changed_s is None else min(now_s, max(changed_s, self.looked_at_s))
        return Activity(state.size_bytes, state.mtime_ns, at, now_s)

    def idle_for_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.changed_at_s)


# On the same host: a file no visible process writes any more ends after this confirmation...
WRITER_GONE_CONFIRM_S = 1.0
# ...and one a visible process still holds open for writing waits up to this many timeouts.
WRITER_HELD_TIMEOUTS = 10


def should_end(
    idle_s: float, timeout_s: float, *, writer_seen: bool, writer_now: bool | None
) -> bool:
    """Is the recording over? `writer_now`: a visible process holds the file open for writing
    (None: cannot tell). `writer_seen`: one did earlier in this stream's life.

    The idle timeout is the rule for writers the agent cannot see; a writer it can see decides
    sooner (it closed the file) or later (it still holds it, merely paused).
    """
    if writer_now:
        return idle_s >= timeout_s * WRITER_HELD_TIMEOUTS
    if writer_now is False and writer_seen:
        return idle_s >= min(WRITER_GONE_CONFIRM_S, timeout_s)
    return idle_s >= timeout_s


@dataclass(frozen=True, slots=True)
class UnconfirmedEnd:
    """A stream that ended on its writer's close before the confirmation: the file as it was
    then. The end stands only if the file is still exactly this when the confirmation is due."""

    activity: Activity
    state: FileState
    ctime_ns: int

    def holds(self, state: FileState, ctime_ns: int) -> bool:
        return state == self.state and ctime_ns == self.ctime_ns


def may_check(
    idle_s: float, timeout_s: float, *, writer_seen: bool, writer_now: bool | None
) -> bool:
    """May the end-of-stream check start? When the stream should end, and as soon as the writer
    seen earlier holds the file no more: the check then reads while the confirmation runs, and
    `should_end` still decides before anything is completed (stream.ending)."""
    ends = should_end(idle_s, timeout_s, writer_seen=writer_seen, writer_now=writer_now)
    return ends or (writer_seen and writer_now is False)


def idle_credit_s(mtime_age_s: float, timeout_s: float, confirm_s: float) -> float:
    """Idleness a file has already earned when the agent first looks at it.

    A file whose mtime is older than the timeout (a finished recording copied in with its times,
    a folder full of files at start-up) need not wait a whole timeout again; one confirmation
    interval without change is still required, so the mtime is never the only evidence. A future
    mtime (clock skew on a network mount) earns nothing.
    """
    return max(0.0, min(mtime_age_s, timeout_s - confirm_s))


def end_reason(stream_identity: FileIdentity, path_state: FileState | None) -> EndReason:
    """Why the stream ends, judged by what its path holds now."""
    if path_state is None:
        return EndReason.FILE_DELETED
    if path_state.identity != stream_identity:
        return EndReason.FILE_REPLACED
    return EndReason.IDLE


def parts_past_end(parts: Iterable[PartRecord], size_bytes: int) -> list[int]:
    """Parts that no longer fit in a file that shrank: they are dropped and re-cut at the end."""
    return sorted(p.number for p in parts if p.end_bytes > size_bytes)


def contiguous_prefix(parts: dict[int, PartRecord]) -> list[PartRecord]:
    """Parts 1..k with no gap: all that can be completed when the file itself is lost."""
    prefix: list[PartRecord] = []
    number = 1
    offset = 0
    while number in parts and parts[number].offset_bytes == offset:
        prefix.append(parts[number])
        offset = parts[number].end_bytes
        number += 1
    return prefix


# The kernel stamps ctime from a clock that lags real time by up to one tick (at most 10 ms, at
# HZ=100); a write that began after a read can then carry a ctime up to a tick *before* the read.
# A part counts as unchanged only when the file's last change is older than its read by more.
CHANGE_MARGIN_NS = 100_000_000
# A ctime with no sub-second part comes from a filesystem that keeps whole seconds (ext4 with
# small inodes, FAT keeps two): its changes are known only to within this.
COARSE_CHANGE_MARGIN_NS = 2_000_000_000
# How far the two clocks may drift apart between a read and its check before the wall clock is
# taken to have been stepped (NTP, a suspended VM): then no read is trusted.
CLOCK_STEP_NS = 50_000_000


def unchanged_since_read(read: ReadMark, ctime_ns: int, now: ReadMark, *, local: bool) -> bool:
    """True when the bytes read at `read` cannot have changed since: the file's last change
    (`ctime_ns`, which unlike mtime no writer can set back) is older than the read.

    Only on a local filesystem: a network filesystem stamps times with the server's clock.
    """
    if not local:
        return False
    if abs((now.wall_ns - read.wall_ns) - (now.mono_ns - read.mono_ns)) > CLOCK_STEP_NS:
        return False
    coarse = ctime_ns % 1_000_000_000 == 0
    margin = COARSE_CHANGE_MARGIN_NS if coarse else CHANGE_MARGIN_NS
    return ctime_ns + margin < read.wall_ns
