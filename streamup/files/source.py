"""A recording on disk, held open by descriptor.

The agent keeps the file of each stream it works on open: if the recorder deletes or replaces
the path, the descriptor still reads the very bytes the stream started with, so the object can
still be finished byte-exact instead of being lost. A stream that only waits for its turn holds
no descriptor (files.budget); it opens its file when its turn comes, through `reopen`, which
checks that the path still names the same file. Reads happen off the event loop, and so do the part
checksums, computed from the buffer just read (CRC32C always, MD5 when the proof needs it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamup.checksums import crc32c_of, crc32c_update, md5_of
from streamup.files.mounts import is_local
from streamup.models import FileIdentity, FileState, ReadMark
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


def readable(path: str) -> OSError | None:
    """Whether `path` can be opened for reading now: None, or why not. Holds no descriptor
    past the call (a stream opens its file when its turn comes)."""
    try:
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
    except OSError as exc:
        return exc
    return None


def read_mark() -> ReadMark:
    return ReadMark(time.time_ns(), time.monotonic_ns())


@dataclass(frozen=True, slots=True)
class PartData:
    """A part's bytes as read, their checksums, and when the read began."""

    span: PartSpan
    body: bytes
    crc32c: bytes
    md5: bytes | None
    read_at: ReadMark


class SourceFile:
    """An open, read-only descriptor on one recording."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.on_close: Callable[[], None] | None = None  # the descriptor budget's release
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.identity = state_of(os.fstat(self._fd)).identity
            self.local = is_local(path, self.identity.device)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def reopen(cls, path: str, identity: FileIdentity, *, same_device: bool) -> SourceFile | None:
        """Open `path` if it still names the file `identity` names (inode, and device when
        `same_device`: NFS clients number devices differently); None when it is gone or another
        file took the path. OSError for anything else (permissions, out of descriptors)."""
        try:
            source = cls(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        found = source.identity
        if found.inode != identity.inode or (same_device and found.device != identity.device):
            source.close()
            return None
        return source

    @property
    def proc_path(self) -> str:
        """A path that reaches this very file even after it was deleted (Linux /proc)."""
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self.on_close is not None:
                self.on_close()

    def fstat(self) -> FileState:
        return state_of(os.fstat(self._fd))

    def ctime_ns(self) -> int:
        """The file's last change (data or attributes): unlike mtime, no writer can set it."""
        return os.fstat(self._fd).st_ctime_ns

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

    def _read_part(self, span: PartSpan, with_md5: bool) -> PartData | None:
        read_at = read_mark()
        body = self._read(span.offset_bytes, span.size_bytes)
        if len(body) != span.size_bytes:
            return None
        return PartData(span, body, crc32c_of(body), md5_of(body) if with_md5 else None, read_at)

    def _sha256_of_prefix(self, size_bytes: int) -> str | None:
        sha, offset = hashlib.sha256(), 0
        while offset < size_bytes:
            chunk = self._read(offset, min(size_bytes - offset, READ_BLOCK_BYTES * 4))
            if not chunk:
                return None
            sha.update(chunk)
            offset += len(chunk)
        return sha.hexdigest()

    def _crc32c_of(self, offset: int, size_bytes: int) -> bytes | None:
        value, end = 0, offset + size_bytes
        while offset < end:
            chunk = self._read(offset, min(end - offset, READ_BLOCK_BYTES))
            if not chunk:
                return None
            value = crc32c_update(value, chunk)
            offset += len(chunk)
        return value.to_bytes(4, "big")

    async def crc32c_of(self, offset: int, size_bytes: int) -> bytes | None:
        """The CRC32C of `size_bytes` from `offset` (read a block at a time, in a thread), or
        None when the file is shorter."""
        return await asyncio.to_thread(self._crc32c_of, offset, size_bytes)

    async def sha256_of_prefix(self, size_bytes: int) -> str | None:
        """The SHA-256 of the file's first `size_bytes` (read a block at a time), or None when
        the file is shorter."""
        return await asyncio.to_thread(self._sha256_of_prefix, size_bytes)

    async def read_part(self, span: PartSpan, *, with_md5: bool) -> PartData | None:
        """The part's bytes and checksums, or None when the file no longer holds the span."""
        return await asyncio.to_thread(self._read_part, span, with_md5)
