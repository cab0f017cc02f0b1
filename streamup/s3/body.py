"""A part's body as it goes on the wire: the bytes read from the file, written in slices.

Handed to botocore as plain `bytes`, a part is copied three times before the kernel sees it:
botocore wraps it in a BytesIO (and adds `Expect: 100-continue`), aiohttp's BytesIO payload copies
the buffer out to measure it and again in 256 KiB reads, and asyncio joins the request head
with the whole body into one more buffer. This body is an aiohttp payload itself, so aiohttp
sends it as it is: memoryview slices of the very bytes that were read and checksummed, each
handed to the socket, and only what the socket does not take at once is buffered. (Measured on
moto, 400 MiB in 16 MiB parts: 0.6 CPU-s instead of 0.9.)

It has `read()` only so that botocore takes it for the file-like body an UploadPart accepts; it
is never read: botocore signs no payload (UNSIGNED-PAYLOAD) and computes no checksum of its own
(s3.client), so the bytes are touched once, by the socket.
"""

from __future__ import annotations

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

SLICE_BYTES = 1024 * 1024


class PartBody(Payload):
    """One part's bytes, sent in slices; made afresh for every attempt."""

    _value: bytes

    def __init__(self, body: bytes) -> None:
        super().__init__(body, content_type="application/octet-stream")
        self._size = self._length = len(body)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        raise TypeError("a part body is written to the connection, never read")

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a part body is binary")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        end = self._length if content_length is None else min(self._length, content_length)
        for start in range(0, end, SLICE_BYTES):
            await writer.write(view[start : min(end, start + SLICE_BYTES)])

    def __repr__(self) -> str:
        return f"PartBody({self._length} bytes)"
