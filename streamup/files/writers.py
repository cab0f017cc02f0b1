"""Which files a visible process holds open for writing (Linux /proc).

The idle timeout is the rule for writers the agent cannot see (another host, another container,
a network mount). On the same host it can do better in both directions: a file a process still
holds open for writing is not finished merely because it paused (the Matroska muxer writes
nothing for seconds at a time), and a file whose writer has closed it is finished after a short
confirmation instead of the full timeout.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection

from streamup.models import FileIdentity

_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def _fd_flags(pid: str, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        return None
    return None


def scan_writers(
    own_pid: int, wanted: Collection[FileIdentity] | None = None
) -> set[FileIdentity] | None:
    """Identities of regular files open for writing by any process we can see (only those
    `wanted`, when given: the open mode is read only for them), or None when /proc cannot tell
    (not Linux)."""
    try:
        pids = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return None
    found: set[FileIdentity] = set()
    for pid in pids:
        if int(pid) == own_pid:
            continue
        try:
            entries = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:  # gone, or not ours to look at
            continue
        for entry in entries:
            try:
                target = os.stat(entry.path)
            except OSError:
                continue
            if (target.st_mode & 0o170000) != 0o100000:  # regular files only
                continue
            identity = FileIdentity(target.st_dev, target.st_ino)
            if wanted is not None and identity not in wanted:
                continue
            flags = _fd_flags(pid, entry.name)
            if flags is not None and (flags & os.O_ACCMODE) in _WRITE_MODES:
                found.add(identity)
    return found


class WriterIndex:
    """One /proc scan serves every stream: cached for `max_age_s`, off the loop.

    A scan looks only for the files asked about in the last `interest_s` (the streams poll far
    more often than that): on a host with many processes, reading the open mode of every file
    every process holds was most of the scan's cost. A file not looked for yet is a new scan.
    """

    def __init__(self, max_age_s: float = 0.25, interest_s: float = 10.0) -> None:
        self.max_age_s = max_age_s
        self.interest_s = interest_s
        self._taken_at = -1e9
        self._writers: set[FileIdentity] | None = None
        self._asked: dict[FileIdentity, float] = {}
        self._scanned_for: frozenset[FileIdentity] = frozenset()
        self._lock = asyncio.Lock()

    async def is_written(self, identity: FileIdentity) -> bool | None:
        """True: a visible process writes it; False: none does; None: cannot tell."""
        async with self._lock:
            now = time.monotonic()
            self._asked[identity] = now
            stale = now - self._taken_at > self.max_age_s
            if stale or identity not in self._scanned_for:
                self._asked = {i: t for i, t in self._asked.items() if now - t <= self.interest_s}
                wanted = frozenset(self._asked)
                self._writers = await asyncio.to_thread(scan_writers, os.getpid(), wanted)
                self._scanned_for, self._taken_at = wanted, time.monotonic()
        if self._writers is None:
            return None
        return identity in self._writers
