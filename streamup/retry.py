"""Capped exponential backoff with full jitter, for as long as an error says it is transient."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streamup.errors import StreamupError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays grow from `first_s` by `factor` up to `cap_s`; each is drawn uniformly below it."""

    first_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        try:
            ceiling = min(self.cap_s, self.first_s * self.factor ** max(attempt - 1, 0))
        except OverflowError:  # attempt 1025 of a long outage: 2.0 ** 1024 is past any float
            ceiling = self.cap_s
        # Full jitter: many agents that lost the network together do not return together.
        return (rng or random).uniform(ceiling / 2, ceiling)


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff = Backoff(),
    on_retry: Callable[[StreamupError, int, float], None] | None = None,
    on_recovered: Callable[[], None] | None = None,
) -> T:
    """Await `call()` until it succeeds or raises an error that is not retryable.

    There is no attempt limit: an outage lasts as long as it lasts, and the agent catches up
    afterwards. Non-streamup exceptions propagate at once (they are bugs, not weather).
    """
    attempt = 0
    while True:
        try:
            result = await call()
        except StreamupError as exc:
            if not exc.retryable:
                raise
            attempt += 1
            delay = backoff.delay_s(attempt)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await asyncio.sleep(delay)
            continue
        if attempt and on_recovered is not None:
            on_recovered()
        return result
