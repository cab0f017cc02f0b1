"""Pure decisions of event delivery: what an answer means, when to try again, what goes next.

Time is an argument (`now_s`, monotonic seconds) and randomness a parameter, so every rule is
tested with tables; `after.delivery` does the I/O and keeps the clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Set
from dataclasses import dataclass
from enum import StrEnum

from streamup.retry import Backoff


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx, exit status 0
    TRANSIENT = "transient"  # 5xx, 408, 429, network trouble, a hook that failed: retried always
    REJECTED = "rejected"  # any other 4xx (and 3xx): retried a few times, then undeliverable


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt came to."""

    outcome: Outcome
    error: str | None = None  # for the log and `status`; None when delivered
    retry_after_s: float | None = None  # the receiver asked for this much patience


def classify_status(status: int) -> Outcome:
    """An HTTP answer's meaning for a webhook delivery."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 429) or status >= 500:
        return Outcome.TRANSIENT
    # 3xx too: redirects are not followed (a POST turned into a GET delivers nothing), so a
    # redirecting URL is a configuration to fix, like a 404.
    return Outcome.REJECTED


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form and nonsense are ignored (None)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


# 1 s, 2 s, 4 s ... up to a minute between attempts: a receiver that is down hears from each
# agent about once a minute, and one that comes back is served within a minute.
DELIVERY_BACKOFF = Backoff(first_s=1.0, factor=2.0, cap_s=60.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; a few tries for refusals, no limit otherwise."""

    backoff: Backoff = DELIVERY_BACKOFF
    rejected_tries: int = 5  # 4xx answers before an event is undeliverable (this run)

    def delay_s(
        self, attempt: Attempt, tries: int, rejections: int, rng: random.Random | None = None
    ) -> float | None:
        """Seconds before trying again after the `tries`-th failed attempt (the `rejections`-th
        refusal among them), or None: give up, the event is undeliverable."""
        if attempt.outcome is Outcome.DELIVERED:
            raise ValueError("a delivered event is not retried")
        if attempt.outcome is Outcome.REJECTED and rejections >= self.rejected_tries:
            return None
        delay = self.backoff.delay_s(tries, rng)
        if attempt.retry_after_s is not None:
            # Honoured, but never past the cap: a receiver cannot park an event for a day.
            delay = max(delay, min(attempt.retry_after_s, self.backoff.cap_s))
        return delay


@dataclass(frozen=True, slots=True)
class Pending:
    """One event that one sink still has to take."""

    event_id: str
    stream_id: str
    seq: int  # the outbox order
    due_s: float  # monotonic time of its next attempt (0: at once)


def pick_ready(
    pending: Iterable[Pending], *, busy: Set[str], now_s: float, limit: int
) -> tuple[list[Pending], float | None]:
    """Which of one sink's pending events to attempt now, oldest first, at most `limit`.

    Per stream only the oldest pending event may go (events of a stream go out in order), and
    not while an earlier attempt of it is in flight (`busy` event ids). Also returns the
    earliest moment a waiting head becomes due, for the caller to wake at (None: nothing waits).
    """
    heads: dict[str, Pending] = {}
    for item in sorted(pending, key=lambda p: p.seq):
        heads.setdefault(item.stream_id, item)
    ready: list[Pending] = []
    wake: float | None = None
    for head in sorted(heads.values(), key=lambda p: p.seq):
        if head.event_id in busy:
            continue
        if head.due_s <= now_s and len(ready) < max(limit, 0):
            ready.append(head)
        elif head.due_s > now_s:
            wake = head.due_s if wake is None else min(wake, head.due_s)
    return ready, wake
