"""The local-file action: delete or move each completed file once S3 provably holds it
(`after.lifecycle` decides; this module observes and acts; `after.disk_guard` asks it to delete
when WATCH_DIR's filesystem runs short).

One action, each step a precondition of the next:
1. the local proof: the record, the file as it is now, who writes it (cheap, so it goes first);
2. with a shared Redis, the action's lease (one agent acts);
3. HeadObject of the object and of its metadata, compared with the record;
4. the intent, checkpointed on the completed record (compare-and-set), then the crash point;
5. the local proof again, freshly observed, right before the irreversible step;
6. the step: unlink; or, to move, a hard link at the target (never over an existing file) and
   an unlink; across filesystems a copy, fsynced, re-read and compared, linked into place, then
   the unlink;
7. the record forgotten (it has done its job) and, in the same store step, the `file.deleted`
   or `file.moved` event put in the outbox; metrics, the log line.

A crash between 4 and 7 is resolved at the next start (`recover`): done (then step 7 runs, so
the event is written once, under its stable id), finished, or the whole action again with every
check. The window between step 5 and the unlink is a few system calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from streamup import metrics
from streamup.after.disk_guard import DiskGuard
from streamup.after.events import file_event
from streamup.after.lifecycle import (
    Action,
    Keep,
    Local,
    Remote,
    Resume,
    due,
    local_verdict,
    move_target,
    partial_path,
    record_verdict,
    remote_verdict,
    resume_intent,
)
from streamup.checkpoint import CheckpointStore
from streamup.errors import StorageError, StreamupError
from streamup.faults import crash_point
from streamup.files.relocate import (
    copy_verified,
    fsync_dir,
    observe_now,
    regular_state,
    sha256_of,
    unlink_durably,
)
from streamup.files.writers import WriterIndex
from streamup.models import CompletedRecord, FileState, utc_now
from streamup.retry import retrying
from streamup.s3.client import S3Storage
from streamup.settings import Settings

log = structlog.get_logger("streamup")

ROUND_S = 1.0  # how often completed files are looked at (a completion wakes the loop at once)
RECHECK_S = 10.0  # a file kept for a reason is looked at again after this long
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)
_SHOWN_KEPT = 50  # files listed in /status as kept (the counts cover all)

for _reason in Keep:
    metrics.LOCAL_FILES_KEPT.labels(reason=_reason.value)
    metrics.LOCAL_FILES_WAITING.labels(reason=_reason.value)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the settings ask of the action (AFTER_UPLOAD and its companions)."""

    action: Action
    watch_dir: str
    target_dir: str | None
    keep_local_s: float
    accept_unproven: bool
    min_free: Callable[[int], int]  # the free-space floor for a filesystem of that many bytes
    shared: bool  # several agents on one store: the finishing host acts, under a lease
    host: str
    agent_id: str
    lease_ttl_s: float

    @classmethod
    def of(cls, s: Settings, *, host: str) -> Policy:
        """The policy the settings ask for; `host` is this agent's host (stream.ownership)."""
        return cls(
            action=Action(s.after_upload),
            watch_dir=os.path.abspath(s.watch_dir),
            target_dir=None if s.after_upload_dir is None else os.path.abspath(s.after_upload_dir),
            keep_local_s=s.keep_local_seconds,
            accept_unproven=s.after_upload_unproven == "accept",
            min_free=s.min_free_floor,
            shared=s.redis_url is not None,
            host=host,
            agent_id=s.agent_id,
            lease_ttl_s=s.lease_ttl_seconds,
        )


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
        self.store = store
        self.storage = storage
        self._records = records
        self._busy = busy
        self._stopping = stopping
        self._event_written = event_written
        self._wake = asyncio.Event()
        self._kept: dict[str, tuple[str, Keep, str]] = {}  # path -> (stream id, reason, detail)
        self._rest_until: dict[str, float] = {}  # path -> monotonic time of the next look
        self._writers = WriterIndex(max_age_s=0.5)
        self.guard = DiskGuard(policy.watch_dir, policy.min_free, lag_bytes=lag_bytes)

    @property
    def short(self) -> str | None:
        """Why the disk is short (MIN_FREE_BYTES, nothing deletable), while it is."""
        return self.guard.short

    # ------------------------------------------------------------------ the loop

    def kick(self) -> None:
        """A stream completed: look now rather than at the next round."""
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
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
                if due(record, self.policy.keep_local_s, now) and not self._resting(path):
                    await self.attempt(path, record, self.policy.action, "after_upload")
        await self.guard.hold(self._records().values(), self._free, self._stopping)
        self._count_kept()

    async def _free(self, record: CompletedRecord) -> bool:
        """The guard's delete: the same action and proofs, whatever AFTER_UPLOAD says."""
        if self._resting(record.path):
            return False
        return await self.attempt(record.path, record, Action.DELETE, "min_free")

    def _resting(self, path: str) -> bool:
        return time.monotonic() < self._rest_until.get(path, 0.0)

    # ------------------------------------------------------------------ one file

    async def attempt(
        self, path: str, record: CompletedRecord, action: Action, trigger: str
    ) -> bool:
        """Delete or move the file when every proof holds; True when it is gone from WATCH_DIR."""
        fresh = await self.store.completed_file(path)
        if fresh is None or fresh.stream_id != record.stream_id:
            self._drop(path, record.stream_id)  # forgotten, or a newer stream's record now
            return False
        record = fresh
        reason = self._record_reason(record)  # no look at the file needed: the cheap part first
        if reason is not None:
            self._keep(record, reason)
            return False
        local = await self._observe(path, fresh_writers=False)
        if local.state is None and not local.symlink:
            await self._forget(record)  # the file is gone already: nothing to free
            return False
        reason = self._local_reason(record, local)
        if reason is not None:
            self._keep(record, reason)
            return False
        target = None
        if action is Action.MOVE:
            assert self.policy.target_dir is not None
            target = move_target(path, self.policy.watch_dir, self.policy.target_dir)
            if target is None or os.path.lexists(target):
                self._keep(record, Keep.TARGET_EXISTS, f"{target} exists")
                return False
        async with self._leased(record) as ours:
            if not ours:
                self._keep(record, Keep.NOT_OWNER)
                return False
            verdict = await self._remote_verdict(record)
            if verdict is not None:
                self._keep(record, *verdict)
                return False
            intent = dataclasses.replace(
                record, local_action=action.value, local_target=target or ""
            )
            if not await self.store.update_completed_file(intent):
                return False  # the record changed under us: the next round looks again
            crash_point("before_local_move" if target else "before_local_delete")
            return await self._carry_out(intent, trigger)

    async def _remote_verdict(self, record: CompletedRecord) -> tuple[Keep, str] | None:
        try:
            head = await self.storage.head_object(record.key)
            meta = await self.storage.head_object(f"{record.key}.metadata.json")
        except StorageError as exc:
            return Keep.S3_UNREACHABLE, str(exc)
        remote = None if head is None else Remote(head.size_bytes, head.etag, head.crc32c)
        return remote_verdict(
            record,
            remote,
            metadata_exists=meta is not None,
            accept_unproven=self.policy.accept_unproven,
        )

    async def _carry_out(self, intent: CompletedRecord, trigger: str) -> bool:
        """The irreversible step, after the local proof is taken once more, freshly."""
        local = await self._observe(intent.path)
        reason = self._local_reason(intent, local)
        if reason is not None:
            await self._clear(intent)
            self._keep(intent, reason)
            return False
        try:
            if intent.local_action == Action.MOVE.value:
                await asyncio.to_thread(self._move, intent)
            else:
                await asyncio.to_thread(unlink_durably, intent.path)
        except OSError as exc:
            await self._clear(intent)
            self._keep(intent, Keep.ACTION_FAILED, f"{type(exc).__name__}: {exc}")
            return False
        crash_point("after_local_unlink")
        await self._done(intent, trigger)
        return True

    def _move(self, intent: CompletedRecord) -> None:
        """Same filesystem: a hard link at the target (refused if anything is there), then the
        unlink. Another filesystem: copy, fsync, compare, link into place, then the unlink."""
        source, target = intent.path, intent.local_target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            copy_verified(source, target, intent)
            crash_point("after_local_copy")
            # The copy took a while: the source must still be the verified file, unwritten.
            local = observe_now(source)
            reason = self._local_reason(intent, local)
            if reason is not None:
                raise OSError(errno.EBUSY, f"the file changed during the copy ({reason})") from None
        else:
            fsync_dir(os.path.dirname(target))
        unlink_durably(source)

    def _record_reason(self, record: CompletedRecord) -> Keep | None:
        p = self.policy
        return record_verdict(
            record,
            accept_unproven=p.accept_unproven,
            busy=self._busy(record.path),
            host_ok=not p.shared or record.host in ("", p.host),
        )

    def _local_reason(
        self, record: CompletedRecord, local: Local, *, check_ctime: bool = True
    ) -> Keep | None:
        p = self.policy
        return local_verdict(
            record,
            local,
            accept_unproven=p.accept_unproven,
            busy=self._busy(record.path),
            host_ok=not p.shared or record.host in ("", p.host),
            check_ctime=check_ctime,
        )

    async def _observe(self, path: str, *, fresh_writers: bool = True) -> Local:
        """The file now. The /proc scan (about 2 ms) is fresh right before an action, and shared
        by the files of one round for the first look."""
        if fresh_writers:
            return await asyncio.to_thread(observe_now, path)
        local = await asyncio.to_thread(observe_now, path, set())  # no scan of its own
        if local.state is None:
            return local
        writer = await self._writers.is_written(local.state.identity)
        return dataclasses.replace(local, writer=writer)

    # ------------------------------------------------------------------ bookkeeping

    async def _done(self, intent: CompletedRecord, trigger: str) -> None:
        """The step is done: the record goes and its event comes, in one store step."""
        moved = intent.local_action == Action.MOVE.value
        event = file_event(intent, host=self.policy.host, created_at=utc_now())
        await retrying(
            lambda: self.store.forget_completed_file(intent.path, intent.stream_id, event)
        )
        self._event_written()
        self._drop(intent.path, intent.stream_id)
        if moved:
            metrics.LOCAL_FILES_MOVED.inc()
        else:
            metrics.LOCAL_FILES_DELETED.labels(trigger=trigger).inc()
        metrics.LOCAL_BYTES_FREED.inc(intent.size_bytes)
        log.info(
            "file.moved" if moved else "file.deleted",
            stream_id=intent.stream_id,
            path=intent.path,
            target=intent.local_target or None,
            key=intent.key,
            size_bytes=intent.size_bytes,
            trigger=trigger,
            event_id=event.event_id,
        )

    async def _clear(self, intent: CompletedRecord) -> None:
        cleared = dataclasses.replace(intent, local_action="", local_target="")
        await retrying(lambda: self.store.update_completed_file(cleared))

    async def _forget(self, record: CompletedRecord) -> None:
        await retrying(lambda: self.store.forget_completed_file(record.path, record.stream_id))
        self._drop(record.path, record.stream_id)

    def _drop(self, path: str, stream_id: str) -> None:
        records = self._records()
        if path in records and records[path].stream_id == stream_id:
            del records[path]
        self._kept.pop(path, None)
        self._rest_until.pop(path, None)

    def _keep(self, record: CompletedRecord, reason: Keep, detail: str = "") -> None:
        """The file stays: logged and counted once per file and reason; looked at again later."""
        self._rest_until[record.path] = time.monotonic() + RECHECK_S
        seen = self._kept.get(record.path)
        self._kept[record.path] = (record.stream_id, reason, detail)
        if seen is not None and seen[:2] == (record.stream_id, reason):
            return
        metrics.LOCAL_FILES_KEPT.labels(reason=reason.value).inc()
        log.info(
            "file.kept",
            stream_id=record.stream_id,
            path=record.path,
            reason=reason.value,
            detail=detail or None,
        )

    def _count_kept(self) -> None:
        counts = dict.fromkeys(Keep, 0)
        for _, reason, _ in self._kept.values():
            counts[reason] += 1
        for reason, count in counts.items():
            metrics.LOCAL_FILES_WAITING.labels(reason=reason.value).set(count)

    @contextlib.asynccontextmanager
    async def _leased(self, record: CompletedRecord) -> AsyncIterator[bool]:
        """With a shared store, one agent acts on a completed file: whoever takes the lease of
        `{stream_id}:local` (renewed while the action runs, released after it)."""
        if not self.policy.shared:
            yield True
            return
        lease_id, ttl_s = f"{record.stream_id}:local", self.policy.lease_ttl_s
        try:
            token = await self.store.acquire_lease(lease_id, self.policy.agent_id, ttl_s)
        except StreamupError:
            token = None
        if token is None:
            yield False
            return

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl_s / 3)
                with contextlib.suppress(StreamupError):
                    await self.store.renew_lease(lease_id, ttl_s)

        renewing = asyncio.create_task(renew())
        try:
            yield True
        finally:
            renewing.cancel()
            with contextlib.suppress(StreamupError):
                await self.store.release_lease(lease_id)

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> None:
        """Finish what a crash interrupted: every record that still holds an intent."""
        for path, record in list(self._records().items()):
            if record.local_action:
                try:
                    await self._resume(path, record)
                except StreamupError as exc:
                    log.warning("local.recovery_failed", path=path, error=str(exc))

    async def _resume(self, path: str, record: CompletedRecord) -> None:
        source = await self._observe(path)
        target = record.local_target
        target_state = regular_state(target) if target else None
        is_copy = False
        if (
            source.state is not None
            and target_state is not None
            and target_state.identity != source.state.identity
        ):
            is_copy = await asyncio.to_thread(sha256_of, target) == record.sha256_hex
        outcome = resume_intent(record, source.state, target_state, target_is_copy=is_copy)
        log.info("file.action_resumed", stream_id=record.stream_id, path=path,
                 action=record.local_action, outcome=outcome.value)  # fmt: skip
        if target:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial_path(target, record.stream_id))
        if outcome is Resume.DONE and _carried_out(record, source.state, target_state):
            # The crash came after the step, before its record and event were written.
            await self._done(record, _resumed_trigger(record, self.policy.action))
        elif outcome is Resume.DONE:  # the file is still there, changed, or went elsewhere
            await self._forget(record)
        elif outcome is Resume.REDO:
            await self._clear(record)
            self._records()[path] = dataclasses.replace(record, local_action="", local_target="")
        elif outcome is Resume.CONFLICT:
            await self._clear(record)
            self._keep(record, Keep.TARGET_EXISTS, f"{target} holds another file")
        else:  # the copy is whole at the target: only the unlink of the source is left
            reason = self._local_reason(record, source, check_ctime=False)
            if reason is not None:
                self._keep(record, reason)
                return
            try:
                await asyncio.to_thread(unlink_durably, path)
            except OSError as exc:
                self._keep(record, Keep.ACTION_FAILED, str(exc))
                return
            await self._done(record, "after_upload")

    # ------------------------------------------------------------------ status

    def view(self) -> dict[str, object]:
        """The `disk` block of /status."""
        kept = sorted(self._kept.items())[:_SHOWN_KEPT]
        return {
            **self.guard.view(),
            "after_upload": self.policy.action.value,
            "files_kept": [
                {"path": path, "stream_id": sid, "reason": reason.value, "detail": detail or None}
                for path, (sid, reason, detail) in kept
            ],
        }


def _carried_out(
    record: CompletedRecord, source: FileState | None, target: FileState | None
) -> bool:
    """After a crash: did the intent's step happen? The verified file is gone from its path
    (another file there is not ours) and, for a move, something is at the target (the link or
    the verified copy is put there before the source is unlinked)."""
    if source is not None and source.identity == record.identity:
        return False  # still there (changed since): nothing was deleted or moved
    return record.local_action != Action.MOVE.value or target is not None


def _resumed_trigger(record: CompletedRecord, action: Action) -> str:
    # The intent does not say what asked for it: a delete under another AFTER_UPLOAD came from
    # the free-space guard (unless the setting changed across the restart).
    if record.local_action == Action.DELETE.value and action is not Action.DELETE:
        return "min_free"
    return "after_upload"
