"""Pure S3 multipart arithmetic: the limits, the part size schedule, which byte ranges to send.

Part numbers follow byte offsets (part n always covers the same range of the file), so sending a
part again is idempotent and a resumed stream knows exactly where each part belongs.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Protocol

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

# S3's multipart limits (also MinIO's and R2's): every part but the last is at least 5 MiB,
# no part exceeds 5 GiB, part numbers run 1..10,000 and an object is at most 5 TiB.
MIN_PART_SIZE_BYTES = 5 * MiB
MAX_PART_SIZE_BYTES = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE_BYTES = 5 * TiB

# The growing schedule doubles the part size every 900 parts. With the smallest base (5 MiB) the
# 10,000 parts then hold more than 5 TiB (doubling every 1,000 parts would stop at 4.88 TiB).
PARTS_PER_TIER = 900
# Past this part number a fixed-size schedule is close to the end: warn the operator.
PART_COUNT_WARNING = 9_000


@dataclass(frozen=True, slots=True)
class PartSpan:
    """The byte range one part number covers."""

    number: int
    offset_bytes: int
    size_bytes: int

    @property
    def end_bytes(self) -> int:
        return self.offset_bytes + self.size_bytes


@dataclass(frozen=True, slots=True)
class PartSchedule:
    """Maps part numbers to byte ranges. Fixed for a stream's whole life (it is checkpointed).

    `fixed=True` keeps every part the same size, for services (Cloudflare R2) that demand it.
    """

    base_bytes: int
    fixed: bool = False

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE_BYTES <= self.base_bytes <= MAX_PART_SIZE_BYTES:
            raise ValueError(
                f"part size {self.base_bytes} is outside S3's limits "
                f"[{MIN_PART_SIZE_BYTES}, {MAX_PART_SIZE_BYTES}]"
            )

    def size_of(self, number: int) -> int:
        """Size in bytes of part `number` (1-based) when it is a whole part."""
        _check_number(number)
        if self.fixed:
            return self.base_bytes
        tier = (number - 1) // PARTS_PER_TIER
        return min(self.base_bytes << tier, MAX_PART_SIZE_BYTES)

    def offset_of(self, number: int) -> int:
        """Byte offset where part `number` starts."""
        _check_number(number)
        if self.fixed:
            return (number - 1) * self.base_bytes
        offset = 0
        remaining = number - 1
        tier_first = 1
        while remaining > 0:
            in_tier = min(remaining, PARTS_PER_TIER)
            offset += in_tier * self.size_of(tier_first)
            remaining -= in_tier
            tier_first += PARTS_PER_TIER
        return offset

    def span(self, number: int) -> PartSpan:
        return PartSpan(number, self.offset_of(number), self.size_of(number))

    @property
    def capacity_bytes(self) -> int:
        """The most bytes 10,000 parts can hold under this schedule (at most S3's 5 TiB)."""
        end = self.span(MAX_PARTS).end_bytes
        return min(end, MAX_OBJECT_SIZE_BYTES)

    def number_at(self, offset_bytes: int) -> int:
        """The part number whose whole-part range contains byte `offset_bytes`."""
        if offset_bytes < 0:
            raise ValueError(f"negative offset {offset_bytes}")
        if self.fixed:
            number = offset_bytes // self.base_bytes + 1
        else:
            number, tier_first, tier_start = 1, 1, 0
            while True:
                size = self.size_of(tier_first)
                tier_bytes = size * PARTS_PER_TIER
                if (
                    offset_bytes < tier_start + tier_bytes
                    or tier_first + PARTS_PER_TIER > MAX_PARTS
                ):
                    number = tier_first + (offset_bytes - tier_start) // size
                    break
                tier_start += tier_bytes
                tier_first += PARTS_PER_TIER
        if number > MAX_PARTS:
            raise ValueError(f"offset {offset_bytes} is past the last part S3 allows")
        return number


class Layout(Protocol):
    """Part numbers -> byte ranges: a `PartSchedule`, or an extended object's layout (copied
    ranges first, then a schedule; stream.extension)."""

    def size_of(self, number: int) -> int: ...
    def offset_of(self, number: int) -> int: ...
    def span(self, number: int) -> PartSpan: ...

    @property
    def capacity_bytes(self) -> int: ...


def _check_number(number: int) -> None:
    if not 1 <= number <= MAX_PARTS:
        raise ValueError(f"part number {number} is outside S3's range 1..{MAX_PARTS}")


def whole_parts_ready(
    schedule: Layout,
    size_bytes: int,
    done: Container[int],
    *,
    limit: int,
    first: int = 1,
) -> list[PartSpan]:
    """Whole parts that lie entirely within the first `size_bytes` and are not in `done`.

    Only whole parts go up while a file grows: an early short part would be smaller than 5 MiB and
    S3 would refuse to complete the upload (EntityTooSmall). At most `limit` spans, lowest first,
    from part `first` on (every part below it is known to be done: a long stream does not rescan
    its thousands of finished parts twice a second).
    """
    ready: list[PartSpan] = []
    number = first
    offset = schedule.offset_of(first)
    while number <= MAX_PARTS and len(ready) < limit:
        size = schedule.size_of(number)
        if offset + size > size_bytes:
            break
        if number not in done:
            ready.append(PartSpan(number, offset, size))
        offset += size
        number += 1
    return ready


def final_layout(schedule: Layout, size_bytes: int) -> list[PartSpan]:
    """The parts that make up an object of `size_bytes`: whole parts, then one shorter last part.

    The last part may be any size (S3 exempts it from the 5 MiB rule), which is also how a file
    that shrank is handled: its last remaining part is simply cut shorter. Empty: no parts.
    """
    if size_bytes > schedule.capacity_bytes:
        raise ValueError(
            f"{size_bytes} bytes exceed what 10,000 parts of this schedule hold "
            f"({schedule.capacity_bytes} bytes)"
        )
    spans: list[PartSpan] = []
    offset = 0
    number = 1
    while offset < size_bytes:
        size = min(schedule.size_of(number), size_bytes - offset)
        spans.append(PartSpan(number, offset, size))
        offset += size
        number += 1
    return spans
