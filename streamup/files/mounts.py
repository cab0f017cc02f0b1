"""Which filesystem a file lives on, from /proc/self/mountinfo: is it local to this host?

Only a local filesystem stamps a file's times from this host's clock, which is what lets the
agent prove that bytes it read cannot have changed since (stream.lifecycle.unchanged_since_read).
Anything it cannot place is treated as not local: the agent then re-reads, which is only slower.
"""

from __future__ import annotations

import os

# Filesystems whose times come from this kernel's clock.
LOCAL_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "jfs",
     "reiserfs", "bcachefs", "ramfs", "nilfs2"}
)  # fmt: skip
MOUNTINFO = "/proc/self/mountinfo"

_by_device: dict[int, bool] = {}


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every line of a mountinfo text."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        found.append((_unescape(fields[4]), right.split()[0]))
    return found


def filesystem_type(path: str, table: list[tuple[str, str]]) -> str | None:
    """The type of the filesystem holding `path` (already resolved): the longest mount point
    that contains it; later mounts over the same point win, as the kernel's do."""
    best: tuple[int, str] | None = None
    for point, fstype in table:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return None if best is None else best[1]


def is_local(path: str, device: int) -> bool:
    """True when `path` (on `device`) lies on a local filesystem; cached per device."""
    known = _by_device.get(device)
    if known is not None:
        return known
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as handle:
            table = mounts(handle.read())
    except OSError:
        return False
    local = filesystem_type(os.path.realpath(path), table) in LOCAL_TYPES
    _by_device[device] = local
    return local
