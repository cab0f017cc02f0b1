"""The local-file action's loop: every completed record the agent holds is looked at once a
round (a completion wakes the loop at once); where AFTER_UPLOAD asks for it and
KEEP_LOCAL_SECONDS has passed, the action (`after.local_action`) runs; then the free-space guard
(`after.disk_guard`, MIN_FREE_BYTES) deletes through the same action and its proofs. At the
start, what a crash interrupted is finished first (`after.local_recovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from streamup.after.disk_guard import DiskGuard
from streamup.after.kept import KeptFiles
from streamup.after.lifecycle import Action, due
from streamup.after.local_action import LocalAction, Policy
from streamup.after.local_recovery import recover
from streamup.checkpoint import CheckpointStore
from streamup.errors import StreamupError
from streamup.models import CompletedRecord, utc_now
from streamup.s3.client import S3Storage

log = structlog.get_logger("streamup")

ROUND_S = 1.0  # how often completed files are looked at (a completion wakes the loop at once)


class LocalFiles:
    """Acts on the completed records the agent holds (`records`: path -> record, shared with it).

    `busy(path)`: a stream is uploading that path; `lag_bytes()`: local bytes not yet in S3;
    `event_written()`: an event entered the outbox (the dispatcher reads it at once).
    """

    def __init__(
        self,
        policy: Policy,
        store: CheckpointStore,
        storage: S3Storage,
        *,
        records: Callable[[], dict[str, CompletedRecord]],
        busy: Callable[[str], bool],
        lag_bytes: Callable[[], int],
        stopping: asyncio.Event,
        event_written: Callable[[], None] = lambda: None,
    ) -> None:
        self.policy = policy
        self._records = records
        self._stopping = stopping
        self._wake = asyncio.Event()
        self.kept = KeptFiles()
        self.action = LocalAction(
            policy, store, storage, self.kept,
            records=records, busy=busy, event_written=event_written,
        )  # fmt: skip
        self.guard = DiskGuard(policy.watch_dir, policy.min_free, lag_bytes=lag_bytes)

    @property
    def short(self) -> str | None:
        """Why the disk is short (MIN_FREE_BYTES, nothing deletable), while it is."""
        return self.guard.short

    def kick(self) -> None:
        """A stream completed: look now rather than at the next round."""
        self._wake.set()

    async def run(self) -> None:
        await recover(self.action)
        while not self._stopping.is_set():
            try:
                await self.round()
            except StreamupError as exc:  # the store is down: the next round tries again
                log.warning("local.round_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ROUND_S)
            self._wake.clear()

    async def round(self) -> None:
        """One look at every completed file: the action where it is due, then the guard."""
        self.guard.measure()
        if self.policy.action is not Action.KEEP:
            now = utc_now()
            for path, record in list(self._records().items()):
                if self._stopping.is_set():
                    return
                if due(record, self.policy.keep_local_s, now) and not self.kept.resting(path):
                    await self.action.attempt(path, record, self.policy.action, "after_upload")
        await self.guard.hold(self._records().values(), self._free, self._stopping)
        self.kept.count()

    async def _free(self, record: CompletedRecord) -> bool:
        """The guard's delete: the same action and proofs, whatever AFTER_UPLOAD says."""
        if self.kept.resting(record.path):
            return False
        return await self.action.attempt(record.path, record, Action.DELETE, "min_free")

    def view(self) -> dict[str, object]:
        """The `disk` block of /status."""
        return {
            **self.guard.view(),
            "after_upload": self.policy.action.value,
            "files_kept": self.kept.view(),
        }
