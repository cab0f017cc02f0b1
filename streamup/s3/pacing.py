"""Upload pacing: part slots served by priority, and BANDWIDTH_LIMIT's shared line.

A paced part is not sent in one burst followed by a pause: its body (an aiohttp payload, like
every part's, s3.body) is written in small slices, and each slice takes its turn on one line
shared by every part in flight, which it holds for its time at the rate; so the link sees a
smooth stream at the limit (and the server's timeouts see bytes flowing). The Content-Length
is the body's `len()`, the CRC32C and MD5 headers were computed from the same bytes before, and
with botocore's own retries off a body is never re-read or rewound: each attempt of the
agent's retry loop builds a new one.

With BANDWIDTH_LIMIT=off there is no pacer at all, and a part's body is the bytes themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import structlog
from aiohttp.abc import AbstractStreamWriter

from streamup import metrics
from streamup.errors import StorageError
from streamup.s3.bandwidth import Rate, Timetable, format_rate
from streamup.s3.body import PartBody
from streamup.s3.priority import Priority, grant, streak_after

log = structlog.get_logger("streamup")

STOPPED_MESSAGE = "the agent is stopping: the part is sent again at the next start"
# A slice is about this much of a second at the rate (smooth), within the bounds below.
SLICE_FRACTION = 1 / 16
MIN_SLICE_BYTES = 4 * 1024
MAX_SLICE_BYTES = 256 * 1024


class PrioritySlots:
    """A semaphore whose waiters are served by s3.priority's rule instead of first come."""

    def __init__(self, total: int, *, keep_one_for_live: Callable[[], bool] | None = None) -> None:
        self.total = total
        self._free = total
        self._waiting: dict[Priority, deque[asyncio.Future[None]]] = {p: deque() for p in Priority}
        self._streak = 0
        self._keep_one = keep_one_for_live or (lambda: False)

    async def acquire(self, priority: Priority = Priority.BACKLOG) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, but the waiter is gone: the slot goes on
            else:
                self._waiting[priority].remove(future)
            raise

    def release(self) -> None:
        self._free += 1
        self._dispatch()

    def holding(self, priority: Priority) -> _Held:
        """`async with slots.holding(priority):` one slot for the block."""
        return _Held(self, priority)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self.release()

    def _dispatch(self) -> None:
        while True:
            for queue in self._waiting.values():
                while queue and queue[0].done():  # cancelled while waiting
                    queue.popleft()
            chosen = grant(
                free=self._free, total=self.total,
                live_waiting=bool(self._waiting[Priority.LIVE]),
                backlog_waiting=bool(self._waiting[Priority.BACKLOG]),
                live_streak=self._streak, keep_one_for_live=self._keep_one(),
            )  # fmt: skip
            if chosen is None:
                return
            self._free -= 1
            self._streak = streak_after(chosen, self._streak)
            self._waiting[chosen].popleft().set_result(None)


class _Held:
    def __init__(self, slots: PrioritySlots, priority: Priority) -> None:
        self.slots, self.priority = slots, priority

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.priority)

    async def __aexit__(self, *_exc: object) -> None:
        self.slots.release()


class Pacer:
    """BANDWIDTH_LIMIT for every part upload together: one line shared by the parts in flight,
    which each slice holds for its time at the rate the timetable gives now; the next slice is
    chosen by priority (s3.priority)."""

    def __init__(
        self,
        timetable: Timetable,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.timetable = timetable
        self._clock, self._wall = clock, wall
        self._turn = PrioritySlots(1)  # one slice at a time takes its bytes
        self._free_at = float("-inf")  # when the line is free again (monotonic)
        self._stopped = False
        self._rate: Rate = None
        self._switch(timetable.rate_at(wall()))

    @property
    def rate(self) -> Rate:
        """The limit in force now (None: no limit), as of the last look at the timetable."""
        return self._rate

    def next_change(self) -> tuple[datetime, Rate] | None:
        change = self.timetable.next_change(self._wall())
        return None if change is None else (change.at, change.rate)

    def refresh(self) -> Rate:
        """Look at the timetable (for every slice: a change lands on its minute); log and count
        a change."""
        rate = self.timetable.rate_at(self._wall())
        if rate != self._rate:
            self._switch(rate)
        return rate

    def _switch(self, rate: Rate) -> None:
        self._rate = rate
        metrics.BANDWIDTH_LIMIT.set(rate or 0)
        change = self.next_change()
        log.info(
            "bandwidth.limit",
            limit=format_rate(rate),
            bytes_per_second=rate or 0,
            next_change_at=change[0].isoformat(timespec="minutes") if change else None,
            next_limit=format_rate(change[1]) if change else None,
        )

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """The shutdown grace is over: paced parts still in flight fail now (unacknowledged,
        they are not checkpointed and go again at the next start) instead of holding the exit."""
        self._stopped = True

    def _check_stopped(self) -> None:
        if self._stopped:
            raise StorageError(STOPPED_MESSAGE, code="Stopping")

    def body(self, data: bytes, priority: Priority) -> bytes | PacedBody:
        """What to hand botocore for a part: the bytes themselves while there is no limit."""
        self._check_stopped()
        if self.refresh() is None:
            return data
        return PacedBody(self, data, priority)

    def slice_bytes(self) -> int:
        rate = self._rate or MAX_SLICE_BYTES
        return max(MIN_SLICE_BYTES, min(MAX_SLICE_BYTES, int(rate * SLICE_FRACTION)))

    async def take(self, nbytes: int, priority: Priority) -> None:
        """Wait for the line, then hold it for `nbytes` at the rate (at once while off).

        The slice goes at once and the line stays taken for its time after: the next slice is
        chosen when that time is up, among the parts waiting then, so a live part that asks
        again right after its slice is there to be chosen (a backlog part cannot slip in).
        """
        await self._turn.acquire(priority)
        try:
            self._check_stopped()
            rate = self.refresh()
        except BaseException:
            self._turn.release()
            raise
        if rate is None:
            self._turn.release()
            return
        now = self._clock()
        hold_s = nbytes / rate
        # A late event loop may catch up by one slice, never more: no burst after a pause.
        self._free_at = max(self._free_at, now - hold_s) + hold_s
        asyncio.get_running_loop().call_later(self._free_at - now, self._turn.release)


class PacedBody(PartBody):
    """A part's bytes written in slices that each wait for their turn on the line: the same
    aiohttp payload as an unpaced part (s3.body), exactly the bytes that were checksummed."""

    def __init__(self, pacer: Pacer, body: bytes, priority: Priority) -> None:
        super().__init__(body)
        self._pacer, self._priority = pacer, priority

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        end = self._length if content_length is None else min(self._length, content_length)
        offset = 0
        while offset < end:
            size = min(self._pacer.slice_bytes(), end - offset)
            await self._pacer.take(size, self._priority)
            await writer.write(view[offset : offset + size])
            offset += size

    def __repr__(self) -> str:
        return f"PacedBody({self._length} bytes, {self._priority.value})"
