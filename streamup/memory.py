"""Process limits the agent sets for itself at start-up: memory tracking the parts in flight
(glibc malloc tuning) and enough file descriptors (each stream holds its file open).

Parts are large buffers (5 MiB and up) allocated and freed by several threads. Left alone,
glibc gives each thread a heap of its own that keeps freed memory resident (RSS grows with threads
x parts), or, for blocks above its mmap threshold, maps each part afresh and unmaps it when freed,
so the kernel zeroes every page of every part again (measured: a fifth of the agent's CPU on a
bulk upload). Instead: one arena for every thread, parts of up to 32 MiB from its heap, where a
freed part's memory is reused by the next part, and free memory at the top of the heap given back
beyond 32 MiB. RSS then follows the parts in flight, plus that slack. Elsewhere (musl, macOS)
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

# mallopt parameter numbers from glibc's malloc.h, and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_TUNING = (
    (_M_ARENA_MAX, 1),
    (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    (_M_TRIM_THRESHOLD, 32 * 1024 * 1024),
)


def tune_malloc() -> bool:
    """Set glibc's allocator up for large part buffers (before any thread starts); True when
    glibc accepted every setting."""
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
    return all([bool(mallopt(parameter, value)) for parameter, value in _TUNING])


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
