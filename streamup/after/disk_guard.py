"""The free-space guard (MIN_FREE_BYTES) on WATCH_DIR's filesystem.

Below the floor, files already in S3 are deleted oldest recording first, each through the
local-file action and every proof it takes (`after.local_files` passes its delete in), until
the floor holds again. When nothing more can go (what is left is still uploading, or kept for a
reason) the disk is *short*: one `disk.short` warning, `streamup_disk_short` = 1 and /healthz
degraded, until it recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

from streamup import metrics
from streamup.after.lifecycle import oldest_first
from streamup.files.disk import DiskUsage, disk_usage
from streamup.models import CompletedRecord

log = structlog.get_logger("streamup")

Delete = Callable[[CompletedRecord], Awaitable[bool]]  # True: the file is gone from WATCH_DIR


class DiskGuard:
    """WATCH_DIR's free space as last measured, and whether it is short right now.

    `min_free(total_bytes)` is the floor for a filesystem of that size (0: the guard is off);
    `lag_bytes()` the local bytes not yet in S3, named in the warning.
    """

    def __init__(
        self, watch_dir: str, min_free: Callable[[int], int], *, lag_bytes: Callable[[], int]
    ) -> None:
        self.watch_dir = watch_dir
        self._min_free = min_free
        self._lag_bytes = lag_bytes
        self.usage: DiskUsage | None = None
        self.short: str | None = None  # why the disk is short, while it is

    def measure(self) -> DiskUsage | None:
        self.usage = disk_usage(self.watch_dir)
        if self.usage is not None:
            metrics.DISK_FREE.set(self.usage.free_bytes)
        return self.usage

    def floor(self) -> int:
        return 0 if self.usage is None else self._min_free(self.usage.total_bytes)

    async def hold(
        self, candidates: Iterable[CompletedRecord], delete: Delete, stopping: asyncio.Event
    ) -> None:
        """Below the floor: `delete` the candidates, oldest first, until it holds again."""
        usage, floor = self.usage, self.floor()
        if usage is None or floor <= 0 or usage.free_bytes >= floor:
            self._set_short(None, usage, floor)
            return
        for record in oldest_first(candidates):
            if stopping.is_set():
                return
            if await delete(record):
                usage = disk_usage(self.watch_dir) or usage
                metrics.DISK_FREE.set(usage.free_bytes)
                if usage.free_bytes >= floor:
                    break
        self.usage = usage
        short = None if usage.free_bytes >= floor else "nothing more can be deleted"
        self._set_short(short, usage, floor)

    def _set_short(self, short: str | None, usage: DiskUsage | None, floor: int) -> None:
        if short is not None and usage is not None:
            reason = (
                f"disk short: {usage.free_bytes} bytes free on WATCH_DIR's filesystem, below"
                f" MIN_FREE_BYTES ({floor}); {short}"
            )
            if self.short is None:
                log.warning(
                    "disk.short",
                    free_bytes=usage.free_bytes,
                    min_free_bytes=floor,
                    local_bytes_not_in_s3=self._lag_bytes(),
                    hint="files still uploading cannot be deleted; add space or upload"
                    " bandwidth, or lower MIN_FREE_BYTES",
                )
            self.short = reason
        elif self.short is not None:
            log.info("disk.recovered", free_bytes=None if usage is None else usage.free_bytes)
            self.short = None
        metrics.DISK_SHORT.set(1 if self.short else 0)

    def view(self) -> dict[str, object]:
        """The guard's part of the `disk` block of /status."""
        usage = self.usage
        return {
            "free_bytes": None if usage is None else usage.free_bytes,
            "total_bytes": None if usage is None else usage.total_bytes,
            "min_free_bytes": self.floor(),
            "short": self.short,
            "local_bytes_not_in_s3": self._lag_bytes(),
        }
