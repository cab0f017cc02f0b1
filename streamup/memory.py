"""Process limits the agent sets for itself at start-up: memory tracking the parts in flight
(glibc malloc tuning) and enough file descriptors (each stream holds its file open).

Parts are large buffers (5 MiB and up) allocated and freed by several threads. glibc raises its
mmap threshold to the size of the largest block freed, so after the first part every later part
comes from per-thread heaps that keep freed memory resident: RSS then grows with threads x parts
instead of parts in flight. Pinning the threshold at 1 MiB makes every part an mmap that goes
back to the system the moment it is freed. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 1024 * 1024


def pin_mmap_threshold() -> bool:
    """Return True when glibc accepted the setting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the limit now in force.

    Every stream holds its recording open (so a deleted or replaced file can still be finished),
    and the common soft limit of 1,024 would stop a folder of a thousand recordings.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
