"""Which files are recordings, and where they are: filesystem events plus a periodic scan.

Events are hints (they are lost on overflow, absent on network mounts and some bind mounts);
`stat()` is the truth, and the periodic scan catches whatever the events missed. Nothing here
knows about S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog
from watchfiles import awatch

log = structlog.get_logger("streamup")

# Names recorders and copy tools give files that are not finished yet.
_TEMPORARY_SUFFIXES = (".part", ".tmp", ".temp", ".crdownload", ".partial", "~")


def is_candidate(relative_path: str, extensions: Iterable[str]) -> bool:
    """True for a recording the agent should upload: the right extension, nothing hidden or
    temporary anywhere in the path."""
    parts = relative_path.replace(os.sep, "/").split("/")
    if any(not part or part.startswith((".", "~")) for part in parts):
        return False
    name = parts[-1].lower()
    if name.endswith(_TEMPORARY_SUFFIXES):
        return False
    return name.endswith(tuple(extensions))


def inside(root_real: str, path: str) -> bool:
    """True when `path`, with every symlink resolved, is still under `root_real`."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def reachable(root_abs: str, root_real: str, path: str) -> bool:
    """True when `path` is reached without entering a symlinked folder, and, if it is itself a
    symlink, it leads to a file inside the watched folder. (inotify follows symlinked folders,
    so events can name paths the scan would never enter.)"""
    folder = os.path.dirname(path)
    expected = os.path.normpath(os.path.join(root_real, os.path.relpath(folder, root_abs)))
    if os.path.realpath(folder) != expected:
        return False
    return not os.path.islink(path) or inside(root_real, path)


def scan(root: Path, extensions: tuple[str, ...]) -> list[str]:
    """Every candidate file under `root`, as absolute paths. Symlinked folders are not entered
    and symlinked files that lead outside `root` are skipped."""
    root_abs = os.path.abspath(root)
    root_real = os.path.realpath(root)
    found: list[str] = []
    for folder, dirs, files in os.walk(root_abs, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith((".", "~"))]
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root_abs)
            if not is_candidate(relative, extensions):
                continue
            if os.path.islink(path) and not inside(root_real, path):
                continue
            found.append(path)
    return found


def relative_key_path(root: Path, path: str) -> str:
    """The path relative to the watched folder, with forward slashes (an S3 key fragment)."""
    return os.path.relpath(path, os.path.abspath(root)).replace(os.sep, "/")


class Watcher:
    """Feeds candidate paths to `on_path`: from events as they come, and from a full scan every
    `scan_interval_s` (and once at start-up). `on_scan` receives each complete scan."""

    def __init__(
        self,
        root: Path,
        extensions: tuple[str, ...],
        *,
        scan_interval_s: float,
        on_path: Callable[[str], None],
        on_scan: Callable[[list[str]], None],
        force_polling: bool = False,
    ) -> None:
        self.root = root
        self.extensions = extensions
        self.scan_interval_s = scan_interval_s
        self.on_path = on_path
        self.on_scan = on_scan
        self.force_polling = force_polling
        self._root_real = os.path.realpath(root)

    async def scan_once(self) -> None:
        paths = await asyncio.to_thread(scan, self.root, self.extensions)
        self.on_scan(paths)

    async def run_scans(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scan_once()
            except OSError as exc:
                log.error("watch.scan_failed", error=str(exc), watch_dir=str(self.root))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.scan_interval_s)

    async def run_events(self, stop: asyncio.Event) -> None:
        root_abs = os.path.abspath(self.root)
        try:
            async for changes in awatch(
                root_abs,
                stop_event=stop,
                recursive=True,
                debounce=200,
                step=50,
                force_polling=self.force_polling,
                ignore_permission_denied=True,
            ):
                for _change, path in changes:
                    relative = os.path.relpath(path, root_abs)
                    if not is_candidate(relative, self.extensions):
                        continue
                    if reachable(root_abs, self._root_real, path):
                        self.on_path(path)
        except (OSError, RuntimeError) as exc:
            # Out of inotify watches, say: the periodic scan still sees every file.
            log.warning("watch.events_unavailable", error=str(exc), fallback="periodic scan")
