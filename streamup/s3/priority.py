"""Who goes first, pure: parts of growing recordings before a backlog of finished files.

Two places ask: the part slots (which waiting part may be read and sent) and the bandwidth
limiter (which part in flight may send its next slice). Both follow one rule:

- a part of a growing stream (`LIVE`) goes before a part of a finished file (`BACKLOG`);
- but when both wait, every `BACKLOG_TURN`-th grant goes to the backlog, so a backlog keeps at
  least a fifth of the line while live streams take what they need, and is never starved;
- while a bandwidth limit is in force, the backlog leaves one part slot free for a live part
  (unless it is the backlog's turn, or there is a single slot): more parts in flight would not
  make a limited line faster, and a live part then never waits for a paced backlog part to end.
  (It cannot hold anyone up for good: a backlog waiter waits only while one slot is free, and
  every other slot is held by a send or a read that ends on its own.)
"""

from __future__ import annotations

from enum import StrEnum

# When live and backlog parts both wait, the backlog gets one grant in this many.
BACKLOG_TURN = 5


class Priority(StrEnum):
    LIVE = "live"
    BACKLOG = "backlog"


def grant(
    *,
    free: int,
    total: int,
    live_waiting: bool,
    backlog_waiting: bool,
    live_streak: int,
    keep_one_for_live: bool = False,
) -> Priority | None:
    """Which waiter gets the next free slot (None: nobody may have one now).

    `live_streak` counts the grants in a row that went to live parts (see `streak_after`).
    """
    if free <= 0:
        return None
    backlog_turn = live_streak >= BACKLOG_TURN - 1
    reserve = keep_one_for_live and total > 1 and free < 2 and not backlog_turn
    backlog_ok = backlog_waiting and not reserve
    if live_waiting and not (backlog_ok and backlog_turn):
        return Priority.LIVE
    return Priority.BACKLOG if backlog_ok else None


def streak_after(granted: Priority, live_streak: int) -> int:
    """The live streak once `granted` got a slot: it grows with live grants, a backlog grant
    ends it."""
    return live_streak + 1 if granted is Priority.LIVE else 0
