"""Free space of the filesystem that holds a folder (statvfs)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiskUsage:
    free_bytes: int  # available to an unprivileged writer (f_bavail), what a recorder gets
    total_bytes: int


def disk_usage(path: str | os.PathLike[str]) -> DiskUsage | None:
    """The filesystem of `path`, or None when it cannot be asked (the folder is gone)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return DiskUsage(info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize)


def same_filesystem(a: str, b: str) -> bool:
    """True when both existing paths live on one filesystem (a rename works between them)."""
    return os.stat(a).st_dev == os.stat(b).st_dev
