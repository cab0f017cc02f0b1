"""The SHA-256 of a file, fed part by part as the parts are read, each byte hashed once.

Parts are fed in offset order (each stream reads its parts in order); the hash covers the file's
first `end_bytes` and remembers its state before every part it took in, so that when the end-of-
stream check finds part k changed, hashing starts again from the state before k instead of from
byte zero. A part fed out of order is not taken: the check re-reads it and hashes from there.

Updates run in worker threads (hashlib releases the GIL on large buffers), chained so each waits
for the one before; the event loop never hashes.
"""

from __future__ import annotations

import asyncio
import hashlib

from streamup.s3.parts import PartSpan


class PrefixHash:
    """SHA-256 of a file's first `end_bytes`."""

    def __init__(self, start: hashlib._Hash | None = None, end_bytes: int = 0) -> None:
        self._sha = start if start is not None else hashlib.sha256()
        self.end_bytes = end_bytes
        self._spans: dict[int, tuple[PartSpan, str]] = {}  # parts taken in, with their CRC32C
        self._before: dict[int, asyncio.Future[hashlib._Hash]] = {}  # state before each part
        self._last: asyncio.Future[None] | None = None

    def feed(
        self, span: PartSpan, body: bytes | bytearray, crc32c_hex: str
    ) -> asyncio.Future[None] | None:
        """Take in a part's bytes (whose CRC32C is `crc32c_hex`) if they continue the prefix:
        the future of their update (done once hashed), or None when not taken."""
        if span.offset_bytes != self.end_bytes or len(body) != span.size_bytes:
            return None
        loop = asyncio.get_running_loop()
        before: asyncio.Future[hashlib._Hash] = loop.create_future()
        previous = self._last

        async def update() -> None:
            if previous is not None:
                await previous
            # Read at run time: a truncate() queued before this update may have rewound it.
            before.set_result(self._sha.copy())
            await asyncio.to_thread(self._sha.update, body)

        self._spans[span.number] = (span, crc32c_hex)
        self._before[span.number] = before
        self.end_bytes = span.end_bytes
        self._last = asyncio.ensure_future(update())
        return self._last

    def covers(self, span: PartSpan, crc32c_hex: str) -> bool:
        """True when exactly this span was taken in, and its bytes had this CRC32C."""
        return self._spans.get(span.number) == (span, crc32c_hex)

    def truncate(self, number: int) -> None:
        """Forget part `number` and every later one (they were dropped and will be re-cut)."""
        doomed = sorted(n for n in self._spans if n >= number)
        if not doomed:
            return
        first, _ = self._spans[doomed[0]]
        state = self._before[doomed[0]]
        for n in doomed:
            del self._spans[n]
            del self._before[n]
        self.end_bytes = first.offset_bytes
        previous = self._last

        async def rewind() -> None:
            if previous is not None:
                await previous
            self._sha = (await state).copy()

        # Later feeds chain on the rewind, so they continue from the restored state.
        self._last = asyncio.ensure_future(rewind())

    async def state_at(self, span: PartSpan) -> hashlib._Hash | None:
        """A copy of the hash of everything before `span`, if the prefix reaches there."""
        taken = self._spans.get(span.number)
        if taken is not None and taken[0].offset_bytes == span.offset_bytes:
            return (await self._before[span.number]).copy()
        if span.offset_bytes == self.end_bytes:
            await self.settle()
            return self._sha.copy()
        return None

    async def settle(self) -> None:
        """Wait until every part fed so far is hashed."""
        if self._last is not None:
            await self._last

    async def hexdigest(self) -> str:
        await self.settle()
        return self._sha.hexdigest()
