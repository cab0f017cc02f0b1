"""A recording on disk, held open by descriptor.

The agent keeps each stream's file open: if the recorder deletes or replaces the path, the
descriptor still reads the very bytes the stream started with, so the object can still be
finished byte-exact instead of being lost. Reads happen off the event loop; hashing there too
(hashlib releases the GIL on large buffers, so parts hash in parallel with other work).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from dataclasses import dataclass

from streamup.models import FileIdentity, FileState
from streamup.s3.parts import PartSpan

READ_BLOCK_BYTES = 8 * 1024 * 1024


def state_of(result: os.stat_result) -> FileState:
    return FileState(FileIdentity(result.st_dev, result.st_ino), result.st_size, result.st_mtime_ns)


def stat_path(path: str) -> FileState | None:
    """`stat()` of a regular file (following a symlink), or None when there is none."""
    try:
        result = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(result.st_mode):
        return None
    return state_of(result)


@dataclass(frozen=True, slots=True)
class PartData:
    span: PartSpan
    body: bytes
    md5_digest: bytes


class SourceFile:
    """An open, read-only descriptor on one recording."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.identity = state_of(os.fstat(self._fd)).identity

    @property
    def proc_path(self) -> str:
        """A path that reaches this very file even after it was deleted (Linux /proc)."""
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fstat(self) -> FileState:
        return state_of(os.fstat(self._fd))

    def _read(self, offset: int, size: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self._fd, min(size, READ_BLOCK_BYTES * 4), offset)
            if not chunk:
                break  # the file shrank under us; the caller compares sizes
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _read_part(self, span: PartSpan) -> PartData | None:
        body = self._read(span.offset_bytes, span.size_bytes)
        if len(body) != span.size_bytes:
            return None
        return PartData(span, body, hashlib.md5(body, usedforsecurity=False).digest())

    async def read_part(self, span: PartSpan) -> PartData | None:
        """The part's bytes and MD5, or None when the file no longer holds the whole span."""
        return await asyncio.to_thread(self._read_part, span)


async def hash_part(source: SourceFile, span: PartSpan, whole: hashlib._Hash) -> PartData | None:
    """Read a part, MD5 it and feed it to the running whole-file SHA-256, both hashes at once.

    The two digests run on two threads (hashlib releases the GIL), so verification costs about
    one hash's time, not two.
    """
    body = await asyncio.to_thread(source._read, span.offset_bytes, span.size_bytes)
    if len(body) != span.size_bytes:
        return None
    md5, _ = await asyncio.gather(
        asyncio.to_thread(lambda: hashlib.md5(body, usedforsecurity=False).digest()),
        asyncio.to_thread(whole.update, body),
    )
    return PartData(span, body, md5)
