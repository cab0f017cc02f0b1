"""Closes after writing, from inotify: the moment a writer on this host is done with a file.

A short-lived writer (`cp`, a download, a recorder that renames its file into place) can open,
fill and close a recording between two /proc scans (files.writers); the agent would never see
it and would wait out the whole idle timeout. The kernel says so directly: IN_CLOSE_WRITE when
a descriptor open for writing is closed, IN_MOVED_TO when a finished file is renamed into place.
A close counts for a file only when it came after the file's last change (its mtime), so an old
close under the same path, or a write after it, says nothing. Like every event this is a hint:
the stream still ends only when /proc shows no writer and the file stays unchanged for the
confirmation (stream.lifecycle). Where inotify is not available (watches exhausted, polling)
nothing is lost but the early end.

watchfiles, which feeds discovery (files.watcher), does not report closes: this is a second,
small inotify instance on the same folders, read on the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from streamup.files.watcher import is_candidate

log = structlog.get_logger("streamup")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
_WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR | IN_DONT_FOLLOW
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_BYTES = 64 * 1024
MAX_REMEMBERED = 10_000  # closes kept; the oldest half goes when there are more


def parse_events(buffer: bytes) -> list[tuple[int, int, str]]:
    """(watch descriptor, mask, name) of every event in what one read() returned."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
        start = offset + _HEADER.size
        name = buffer[start : start + length].split(b"\0", 1)[0]
        events.append((wd, mask, os.fsdecode(name)))
        offset = start + length
    return events


class CloseWatch:
    """Which candidate files under `root` a local writer closed (or renamed into place), and
    when; `on_close(path)` for each, so the stream looks at once."""

    def __init__(
        self, root: Path, extensions: tuple[str, ...], on_close: Callable[[str], None]
    ) -> None:
        self.root = os.path.abspath(root)
        self.extensions = extensions
        self.on_close = on_close
        self._fd = -1
        self._folders: dict[int, str] = {}  # watch descriptor → folder
        self._closed_ns: dict[str, int] = {}  # path → wall-clock time of its last close
        self._warned = False

    def start(self) -> bool:
        """Watch the folder tree; False (logged once) when inotify is not available here."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._add_watch = libc.inotify_add_watch
            self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError) as exc:
            self._unavailable(str(exc))
            return False
        if fd < 0:
            self._unavailable(os.strerror(ctypes.get_errno()))
            return False
        self._fd = fd
        self._watch_tree(self.root)
        asyncio.get_running_loop().add_reader(fd, self._readable)
        return True

    def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def closed_after(self, path: str, mtime_ns: int) -> bool:
        """Did a writer close `path` (or rename it into place) after its last change?"""
        return self._closed_ns.get(path, -1) >= mtime_ns

    # ------------------------------------------------------------------ inotify

    def _unavailable(self, error: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("watch.closes_unavailable", error=error, fallback="writer scans")

    def _watch_tree(self, top: str) -> None:
        for folder, _dirs, _files in os.walk(top, followlinks=False):
            wd = self._add_watch(self._fd, os.fsencode(folder), _WATCH_MASK)
            if wd < 0:
                self._unavailable(f"{folder}: {os.strerror(ctypes.get_errno())}")
                continue
            self._folders[wd] = folder

    def _readable(self) -> None:
        try:
            buffer = os.read(self._fd, _READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        for wd, mask, name in parse_events(buffer):
            self._on_event(wd, mask, name)

    def _on_event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_IGNORED:
            self._folders.pop(wd, None)  # the folder went away
            return
        folder = self._folders.get(wd)
        if folder is None or mask & IN_Q_OVERFLOW:
            return  # overflowed: closes were lost, the idle timeout still ends those streams
        path = os.path.join(folder, name)
        if mask & IN_ISDIR:
            if mask & (IN_CREATE | IN_MOVED_TO):
                self._watch_tree(path)  # a new folder: its files are watched too
            return
        if mask & (IN_CLOSE_WRITE | IN_MOVED_TO) and is_candidate(
            os.path.relpath(path, self.root), self.extensions
        ):
            self._remember(path)
            self.on_close(path)

    def _remember(self, path: str) -> None:
        self._closed_ns.pop(path, None)
        self._closed_ns[path] = time.time_ns()
        if len(self._closed_ns) > MAX_REMEMBERED:
            for old in list(self._closed_ns)[: MAX_REMEMBERED // 2]:
                del self._closed_ns[old]
