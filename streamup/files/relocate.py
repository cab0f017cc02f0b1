"""Blocking file operations of the local-file action (run in threads by after.local_action):
observe a file and its writers, unlink durably, copy across filesystems and prove the copy."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat

from streamup.after.lifecycle import Local, partial_path
from streamup.files.source import state_of
from streamup.files.writers import scan_writers
from streamup.models import CompletedRecord, FileIdentity, FileState

COPY_BLOCK_BYTES = 8 * 1024 * 1024


class CopyMismatch(OSError):
    """The copy's bytes are not the verified file's."""


def observe_now(path: str, writers: set[FileIdentity] | bool | None = True) -> Local:
    """The file at `path` (not following a symlink) and whether a visible process writes it:
    from a fresh /proc scan (`writers` True: a cached one could miss a writer that opened the
    file just now), or from the `writers` given (None: cannot tell)."""
    try:
        result = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Local(None)
    if stat.S_ISLNK(result.st_mode):
        return Local(None, symlink=True)
    if not stat.S_ISREG(result.st_mode):
        return Local(None)
    state = state_of(result)
    found = scan_writers(os.getpid()) if writers is True else writers
    writer = None if found is None or isinstance(found, bool) else state.identity in found
    return Local(state, result.st_ctime_ns, writer=writer)


def regular_state(path: str) -> FileState | None:
    return observe_now(path).state


def unlink_durably(path: str) -> None:
    os.unlink(path)
    fsync_dir(os.path.dirname(path))


def fsync_dir(folder: str) -> None:
    """Make a name's creation or removal durable (a crash must not bring it back)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(COPY_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def copy_verified(source: str, target: str, intent: CompletedRecord) -> None:
    """Copy to a partial file beside the target, fsync it, check that what was read is the
    verified file and what the disk gives back is what was read, then link it into place."""
    partial = partial_path(target, intent.stream_id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # a crash's leftover: ours by its name
    read = hashlib.sha256()
    try:
        with open(source, "rb") as src:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while block := src.read(COPY_BLOCK_BYTES):
                    read.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
                # What is compared next comes from the disk, not from the page cache.
                os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            info = os.fstat(src.fileno())
        if read.hexdigest() != intent.sha256_hex:
            raise CopyMismatch(errno.EIO, "the bytes read are not the verified file's")
        if sha256_of(partial) != intent.sha256_hex:
            raise CopyMismatch(errno.EIO, "the copy reads back different bytes")
        os.chmod(partial, stat.S_IMODE(info.st_mode))
        os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.link(partial, target)  # never over a file that appeared meanwhile
        fsync_dir(os.path.dirname(target))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
