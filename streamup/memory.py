"""Keep the agent's resident memory tracking the parts in flight (glibc malloc tuning).

Parts are large buffers (5 MiB and up) allocated and freed by several threads. glibc raises its
mmap threshold to the size of the largest block freed, so after the first part every later part
comes from per-thread heaps that keep freed memory resident: RSS then grows with threads x parts
instead of parts in flight. Pinning the threshold at 1 MiB makes every part an mmap that goes
back to the system the moment it is freed. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
