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


def scan_writers(own_pid: int) -> set[FileIdentity] | None:
    """Identities of regular files open for writing by any process we can see, or None when
    /proc cannot tell (not Linux)."""
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
            flags = _fd_flags(pid, entry.name)
            if flags is not None and (flags & os.O_ACCMODE) in _WRITE_MODES:
                found.add(FileIdentity(target.st_dev, target.st_ino))
    return found


class WriterIndex:
    """One /proc scan (about 2 ms) serves every stream: cached for `max_age_s`, off the loop."""

    def __init__(self, max_age_s: float = 0.25) -> None:
        self.max_age_s = max_age_s
        self._taken_at = -1e9
        self._writers: set[FileIdentity] | None = None
        self._lock = asyncio.Lock()

    async def is_written(self, identity: FileIdentity) -> bool | None:
        """True: a visible process writes it; False: none does; None: cannot tell."""
        async with self._lock:
            if time.monotonic() - self._taken_at > self.max_age_s:
                self._writers = await asyncio.to_thread(scan_writers, os.getpid())
                self._taken_at = time.monotonic()
        if self._writers is None:
            return None
        return identity in self._writers
