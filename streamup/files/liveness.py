"""Is an agent of this host still alive? Asked of the kernel, through a lock only a live process
can hold.

Each agent holds an exclusive `flock` on its own mark, `{STATE_DIR}/agents/{AGENT_ID}.alive`,
for as long as it runs. The kernel drops the lock the moment the process dies, however it dies
(SIGKILL included), so another agent of the same host that can take the lock knows the owner is
gone: a restarted agent takes its dead predecessor's leases over at once instead of waiting out
their TTL. A pid would not do: pids are reused, and agents in containers (host network, one host
name) do not see each other's. Anything this cannot tell (no mark: another STATE_DIR, another
container) counts as alive, and the lease lapses as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from urllib.parse import quote

import structlog

log = structlog.get_logger("streamup")

SUFFIX = ".alive"
# A mark nobody holds and nobody touched for this long belongs to an agent gone for good.
STALE_MARK_S = 24 * 3600.0


def mark_path(folder: Path, agent_id: str) -> Path:
    return folder / (quote(agent_id, safe="") + SUFFIX)


class AgentMarks:
    """This agent's mark (held while it runs), and the question about other agents' marks."""

    def __init__(self, folder: Path, agent_id: str) -> None:
        self.folder = folder
        self.agent_id = agent_id
        self._fd: int | None = None
        self._dead: set[str] = set()

    def hold(self) -> bool:
        """Create and lock our mark; False (and the feature off) when the folder is unusable."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = mark_path(self.folder, self.agent_id)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.info("agent.no_liveness_mark", folder=str(self.folder), error=exc.strerror)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another live process runs under our AGENT_ID: leave its mark alone
            return False
        self._fd = fd
        self._sweep()
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(mark_path(self.folder, self.agent_id))
            os.close(self._fd)
            self._fd = None

    def is_dead(self, agent_id: str) -> bool:
        """True only when `agent_id` left a mark here that no process holds any more."""
        if self._fd is None or agent_id == self.agent_id:
            return False
        if agent_id in self._dead:
            return True
        if not _unheld(mark_path(self.folder, agent_id)):
            return False
        self._dead.add(agent_id)
        return True

    def _sweep(self) -> None:
        """Remove marks of agents gone for a day (their leases lapsed long ago)."""
        now = time.time()
        with contextlib.suppress(OSError):
            for path in self.folder.glob("*" + SUFFIX):
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > STALE_MARK_S and _unheld(path):
                        path.unlink()


def _unheld(path: Path) -> bool:
    """The mark exists and no process holds its lock (taken and dropped again at once)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the lock if it was taken
    return True
