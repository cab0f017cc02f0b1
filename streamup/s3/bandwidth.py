"""BANDWIDTH_LIMIT, pure: a rate in bytes per second, or a weekly timetable of rates.

The value is one rate (`512k`, `10M`, `off`) or entries `[DAYS-]HH:MM,RATE` separated by spaces
(rclone's `--bwlimit` timetable, in local time):

- `HH:MM,RATE` changes the rate at that time every day;
- `Mon-HH:MM,RATE` only on Mondays; `Mon-Fri-HH:MM,RATE` on each day of the range, which may
  wrap (`Sat-Mon` is Saturday, Sunday, Monday).

An entry holds until the next one in the week, so the rate before the first entry of a day is
the last one of the day before (midnight and the week wrap around). Rates are binary: `k` is
1,024 bytes, `M` 1,024², `G` 1,024³; `off` is no limit.

Time is the wall clock (local time, whatever the time zone does): the rate now is the entry in
force at the wall time now. When the clocks go forward, an entry inside the skipped hour takes
effect at the jump; when they go back, the entries of the repeated hour apply again.

Everything here takes the time as an argument and touches no clock.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
# Below this a part of 5 MiB would take over an hour: a typo more likely than a wish.
MIN_RATE_BYTES_PER_S = 1024
EXAMPLE = '"08:00,512k 19:00,10M 23:00,off" or "Mon-Fri-08:00,2M Sat-00:00,off"'

_RATE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)(?:i?b)?")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_ENTRY = re.compile(
    r"(?:(?P<days>[a-z]{3}(?:-[a-z]{3})?)-)?(?P<hh>\d{1,2}):(?P<mm>\d{2}),(?P<rate>.+)"
)

Rate = int | None  # bytes per second; None: no limit


def parse_rate(text: str) -> Rate:
    """`off`, or a number of bytes per second with an optional binary suffix (k, M, G)."""
    value = text.strip().lower()
    if value in ("off", ""):
        return None
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(f"rate {text!r} is not a rate: use e.g. 512k, 10M, 1.5M or off")
    rate = int(float(match[1]) * _UNITS[match[2]])
    if rate == 0:
        raise ValueError(f"rate {text!r} would send nothing; use off for no limit")
    if rate < MIN_RATE_BYTES_PER_S:
        raise ValueError(f"rate {text!r} is below 1k (1,024 bytes per second); use 1k or more")
    return rate


def format_rate(rate: Rate) -> str:
    """The rate as a person reads it: `off`, `512k`, `2M`, `1.5M` (binary units)."""
    if rate is None:
        return "off"
    for suffix, unit in (("G", 1024**3), ("M", 1024**2), ("k", 1024)):
        if rate >= unit:
            return f"{rate / unit:.2f}".rstrip("0").rstrip(".") + suffix
    return str(rate)


@dataclass(frozen=True, slots=True)
class Change:
    """The rate a timetable switches to at the wall time `at` (local, naive)."""

    at: datetime
    rate: Rate


@dataclass(frozen=True)
class Timetable:
    """Points of the week (minute of the week from Monday 00:00) where the rate changes, sorted.

    One rate for the whole week is a single point: it never changes.
    """

    points: tuple[tuple[int, Rate], ...]

    @property
    def limited(self) -> bool:
        """Whether any entry limits the rate (False: `off` all week, no pacing at all)."""
        return any(rate is not None for _, rate in self.points)

    @property
    def constant(self) -> bool:
        return len({rate for _, rate in self.points}) == 1

    def rate_at(self, now: datetime) -> Rate:
        """The rate in force at the wall time `now`."""
        index = bisect.bisect_right(self._minutes, _minute_of_week(now)) - 1
        return self.points[index][1]  # index -1: the last entry of the week before

    def next_change(self, now: datetime) -> Change | None:
        """The next wall time after `now` where the rate becomes another one (None: never)."""
        if self.constant:
            return None
        current = self.rate_at(now)
        minute = _minute_of_week(now)
        start = bisect.bisect_right(self._minutes, minute)
        week_start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=now.weekday()
        )
        count = len(self.points)
        for step in range(count):
            point_minute, rate = self.points[(start + step) % count]
            if rate == current:
                continue
            weeks = (start + step) // count
            return Change(week_start + timedelta(weeks=weeks, minutes=point_minute), rate)
        return None  # unreachable: not constant means some point differs

    @cached_property
    def _minutes(self) -> list[int]:
        return [minute for minute, _ in self.points]


def _minute_of_week(now: datetime) -> int:
    return now.weekday() * MINUTES_PER_DAY + now.hour * 60 + now.minute


def parse_bandwidth(text: str) -> Timetable:
    """BANDWIDTH_LIMIT's value as a timetable; ValueError quoting the first bad entry."""
    entries = text.split()
    if len(entries) <= 1 and (not entries or "," not in entries[0]):
        return Timetable(((0, parse_rate(entries[0] if entries else "off")),))
    points: dict[int, tuple[Rate, str]] = {}
    for entry in entries:
        days, minute, rate = _parse_entry(entry)
        for day in days:
            at = day * MINUTES_PER_DAY + minute
            if at in points:
                raise ValueError(
                    f"entries {points[at][1]!r} and {entry!r} both set the rate on "
                    f"{DAYS[day].title()} at {minute // 60:02d}:{minute % 60:02d}; keep one"
                )
            points[at] = (rate, entry)
    return Timetable(tuple((at, rate) for at, (rate, _) in sorted(points.items())))


def _parse_entry(entry: str) -> tuple[list[int], int, Rate]:
    match = _ENTRY.fullmatch(entry.lower())
    if match is None:
        raise ValueError(f"entry {entry!r} is not [DAYS-]HH:MM,RATE; use e.g. {EXAMPLE}")
    hours, minutes = int(match["hh"]), int(match["mm"])
    if hours > 23 or minutes > 59:
        raise ValueError(f"entry {entry!r}: the time must be 00:00 to 23:59")
    try:
        rate = parse_rate(match["rate"])
    except ValueError as exc:
        raise ValueError(f"entry {entry!r}: {exc}") from None
    return _parse_days(entry, match["days"]), hours * 60 + minutes, rate


def _parse_days(entry: str, text: str | None) -> list[int]:
    if text is None:
        return list(range(7))
    first, _, last = text.partition("-")
    if first not in DAYS or (last and last not in DAYS):
        raise ValueError(f"entry {entry!r}: days are Mon, Tue, Wed, Thu, Fri, Sat, Sun or a range")
    start = DAYS.index(first)
    end = DAYS.index(last) if last else start
    return [(start + step) % 7 for step in range((end - start) % 7 + 1)]


def describe(timetable: Timetable, now: datetime) -> dict[str, object]:
    """The `bandwidth` section of the status document at the wall time `now`."""
    rate = timetable.rate_at(now)
    change = timetable.next_change(now)
    return {
        "limit": format_rate(rate),
        "bytes_per_second": rate or 0,
        "next_change_at": None if change is None else change.at.isoformat(timespec="minutes"),
        "next_limit": None if change is None else format_rate(change.rate),
    }
