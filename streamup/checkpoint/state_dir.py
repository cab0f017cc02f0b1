"""STATE_DIR: the lock that keeps a second agent out, and why a folder cannot hold the store."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

from streamup.errors import CheckpointError

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def unusable_state_dir(state_dir: Path, exc: OSError | sqlite3.Error) -> str:
    """Why STATE_DIR cannot hold the store, and the fix: a full disk is not a permission."""
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", 0) == _SQLITE_FULL
    )
    if full:
        return (
            f"the disk holding STATE_DIR={state_dir} is full ({exc}); free space on it or"
            " point STATE_DIR at another disk"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return (
            f"STATE_DIR={state_dir} is on a read-only filesystem ({exc}); point STATE_DIR at a"
            " writable one"
        )
    return (
        f"cannot use STATE_DIR={state_dir} ({exc}); point STATE_DIR at a directory"
        " this user can create and write"
    )


def lock_state_dir(lock_path: Path, state_dir: Path) -> int:
    # O_CLOEXEC: a child (ffprobe) must not inherit the lock and hold it after the agent dies.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise CheckpointError(
            f"another streamup agent is already using STATE_DIR={state_dir} (lock {lock_path});"
            " stop it or give this agent its own STATE_DIR"
        ) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd
