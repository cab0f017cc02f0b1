"""How many recordings the agent holds open at once: a fixed budget under the open-files limit.

A stream holds its file open while it works on it, so that a recording deleted or replaced
mid-upload is still finished byte-exact from the descriptor. A stream that only waits (a finished
file queued behind the others) holds nothing: it takes a place in the budget, opens its file
then, and checks that the path still names the file it found (same device and inode). A file
deleted or replaced before its turn is reported as lost, as the core does for a file that
vanished while the agent was down; a replacement is a new stream, as always.

A stream whose file has stopped growing gives its place up while other streams wait for one
(`contended`), and queues for it again: an idle recording does not keep a finished one from
being uploaded. The price: a file deleted while its stream holds no descriptor cannot be
finished from the descriptor; it is kept as far as S3 holds it (files.FileGone), flagged lost.
With no one waiting, nothing is given up and the guarantee is whole.

However many files the folder holds, the agent then needs at most the budget plus a fixed
reserve of descriptors (the S3 and Redis connection pools, inotify, SQLite, the HTTP port).
Running out anyway (another process of the same user, a tiny limit) is weather, not a bad file:
the open is retried with backoff and said once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource

import structlog

from streamup.files.source import SourceFile
from streamup.models import FileIdentity
from streamup.retry import Backoff

log = structlog.get_logger("streamup")

# Kept out of the budget: the connection pools (passed in), inotify, SQLite and its WAL, the
# lock files, the HTTP port and its clients, the log, Python's own.
RESERVED_DESCRIPTORS = 48
# What one open stream may need: its file and, while ffprobe reads it, the child's three pipes.
DESCRIPTORS_PER_FILE = 4
# Past this many files open at once nothing is gained (parts in flight are bounded anyway).
MAX_OPEN_FILES = 4096
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_RETRY = Backoff(first_s=0.5, factor=2.0, cap_s=10.0)


class FileGone(Exception):
    """The file of a stream that gave its place up left its path before the stream's turn
    came again (deleted, or replaced): what S3 holds is kept, as for a file lost while down."""


def files_budget(open_files_limit: int, pooled: int) -> int:
    """How many recordings may be open at once under `open_files_limit` descriptors, `pooled`
    of them kept for connection pools. At least one: a tiny limit is slow, not stuck."""
    spare = open_files_limit - RESERVED_DESCRIPTORS - pooled
    return max(1, min(MAX_OPEN_FILES, spare // DESCRIPTORS_PER_FILE))


def open_files_limit() -> int:
    """The open-files limit in force (the soft one; cli raised it to the hard one already)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def out_of_descriptors(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS


class FileBudget:
    """Places for open recordings; a stream waits for one before it opens its file."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._places = asyncio.Semaphore(size)
        self.open_now = 0
        self.waiting = 0  # streams waiting for a place now
        self._short = False  # an out-of-descriptors episode is going on (said once)

    async def open(
        self, path: str, identity: FileIdentity, *, same_device: bool
    ) -> SourceFile | None:
        """Wait for a place, then open `path` if it is still the file `identity` names (the
        device too when `same_device`: a file seen on this host). None: gone or replaced."""
        self.waiting += 1
        try:
            await self._places.acquire()
        finally:
            self.waiting -= 1
        attempt = 0
        while True:
            try:
                source = SourceFile.reopen(path, identity, same_device=same_device)
            except OSError as exc:
                if not out_of_descriptors(exc):
                    self._places.release()
                    raise
                attempt += 1
                await self._wait_for_descriptors(path, exc, attempt)
                continue
            except BaseException:
                self._places.release()
                raise
            if self._short:
                self._short = False
                log.info("files.descriptors_back", path=path, attempts=attempt)
            if source is None:
                self._places.release()
                return None
            self.open_now += 1
            source.on_close = self._closed
            return source

    async def _wait_for_descriptors(self, path: str, exc: OSError, attempt: int) -> None:
        if not self._short:
            self._short = True
            log.error(
                "files.out_of_descriptors",
                path=path,
                error=exc.strerror,
                open_files=self.open_now,
                hint="raise the open-files limit (ulimit -n, LimitNOFILE=); work waits meanwhile",
            )
        try:
            await asyncio.sleep(_RETRY.delay_s(attempt))
        except BaseException:
            self._places.release()
            raise

    @property
    def contended(self) -> bool:
        """Streams wait for a place: an idle stream should give its place up."""
        return self.waiting > 0

    def _closed(self) -> None:
        self.open_now -= 1
        self._places.release()


def descriptors_in_use(pid: int | None = None) -> int:
    """How many descriptors a process has open now (Linux /proc), or -1 when unknown."""
    try:
        return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))
    except OSError:
        return -1
