"""The local-file action: delete or move one completed file once S3 provably holds it
(`after.lifecycle` decides; this module observes and acts; `after.local_files` runs it for
every completed file, `after.disk_guard` asks it to delete when WATCH_DIR's filesystem runs
short, `after.local_recovery` finishes what a crash interrupted).

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

A crash between 4 and 7 is resolved at the next start (`after.local_recovery`): done (then
step 7 runs, so the event is written once, under its stable id), finished, or the whole action
again with every check. The window between step 5 and the unlink is a few system calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from streamup import metrics
from streamup.after.events import file_event
from streamup.after.kept import KeptFiles
from streamup.after.lifecycle import (
    Action,
    Keep,
    Local,
    Remote,
    host_may_act,
    local_verdict,
    move_target,
    record_verdict,
    remote_verdict,
)
from streamup.checkpoint import CheckpointStore
from streamup.errors import StorageError, StreamupError
from streamup.faults import crash_point
from streamup.files.relocate import copy_verified, fsync_dir, observe_now, unlink_durably
from streamup.files.writers import WriterIndex
from streamup.models import CompletedRecord, utc_now
from streamup.retry import retrying
from streamup.s3.client import S3Storage
from streamup.settings import Settings

log = structlog.get_logger("streamup")

_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)


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


class LocalAction:
    """Deletes or moves one completed file when every proof holds (the steps above).

    `records()`: the agent's completed records (path -> record, shared with it); `busy(path)`:
    a stream is uploading that path; `event_written()`: an event entered the outbox.
    """

    def __init__(
        self,
        policy: Policy,
        store: CheckpointStore,
        storage: S3Storage,
        kept: KeptFiles,
        *,
        records: Callable[[], dict[str, CompletedRecord]],
        busy: Callable[[str], bool],
        event_written: Callable[[], None],
    ) -> None:
        self.policy = policy
        self.store = store
        self.storage = storage
        self.kept = kept
        self.records = records
        self._busy = busy
        self._event_written = event_written
        self._writers = WriterIndex(max_age_s=0.5)

    async def attempt(
        self, path: str, record: CompletedRecord, action: Action, trigger: str
    ) -> bool:
        """Delete or move the file when every proof holds; True when it is gone from WATCH_DIR."""
        fresh = await self._stored(path, record)
        if fresh is None:
            return False
        record = fresh
        reason = self._record_reason(record)  # no look at the file needed: the cheap part first
        if reason is not None:
            self.kept.keep(record, reason)
            return False
        local = await self.observe(path, fresh_writers=False)
        if local.state is None and not local.symlink:
            await self.forget(record)  # the file is gone already: nothing to free
            return False
        reason = self.local_reason(record, local)
        if reason is not None:
            self.kept.keep(record, reason)
            return False
        target = None
        if action is Action.MOVE:
            assert self.policy.target_dir is not None
            target = move_target(path, self.policy.watch_dir, self.policy.target_dir)
            if target is None or os.path.lexists(target):
                self.kept.keep(record, Keep.TARGET_EXISTS, f"{target} exists")
                return False
        async with self._leased(record) as ours:
            if not ours:
                self.kept.keep(record, Keep.NOT_OWNER)
                return False
            verdict = await self._remote_verdict(record)
            if verdict is not None:
                self.kept.keep(record, *verdict)
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
        local = await self.observe(intent.path)
        reason = self.local_reason(intent, local)
        if reason is not None:
            await self.clear(intent)
            self.kept.keep(intent, reason)
            return False
        try:
            if intent.local_action == Action.MOVE.value:
                await asyncio.to_thread(self._move, intent)
            else:
                await asyncio.to_thread(unlink_durably, intent.path)
        except OSError as exc:
            await self.clear(intent)
            self.kept.keep(intent, Keep.ACTION_FAILED, f"{type(exc).__name__}: {exc}")
            return False
        crash_point("after_local_unlink")
        await self.done(intent, trigger)
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
            reason = self.local_reason(intent, local)
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
            host_ok=host_may_act(record, shared=p.shared, host=p.host),
        )

    def local_reason(
        self, record: CompletedRecord, local: Local, *, check_ctime: bool = True
    ) -> Keep | None:
        """Why the file must stay, from its record and how it looks now; None: go on."""
        p = self.policy
        return local_verdict(
            record,
            local,
            accept_unproven=p.accept_unproven,
            busy=self._busy(record.path),
            host_ok=host_may_act(record, shared=p.shared, host=p.host),
            check_ctime=check_ctime,
        )

    async def observe(self, path: str, *, fresh_writers: bool = True) -> Local:
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

    async def done(self, intent: CompletedRecord, trigger: str) -> None:
        """The step is done: the record goes and its event comes, in one store step."""
        moved = intent.local_action == Action.MOVE.value
        event = file_event(intent, host=self.policy.host, created_at=utc_now())
        await retrying(
            lambda: self.store.forget_completed_file(intent.path, intent.stream_id, event)
        )
        self._event_written()
        self.drop(intent.path, intent.stream_id)
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

    async def clear(self, intent: CompletedRecord) -> None:
        """The intent is withdrawn: the record is as it was before the action began."""
        cleared = dataclasses.replace(intent, local_action="", local_target="")
        await retrying(lambda: self.store.update_completed_file(cleared))

    async def forget(self, record: CompletedRecord) -> None:
        """The file is gone (not by us): its record has done its job."""
        await retrying(lambda: self.store.forget_completed_file(record.path, record.stream_id))
        self.drop(record.path, record.stream_id)

    async def _stored(self, path: str, record: CompletedRecord) -> CompletedRecord | None:
        """The store's record of this stream's file, or None (the file is left alone)."""
        fresh = await self.store.completed_file(path)
        if fresh is None and os.path.lexists(path):
            # The store lost it (a flushed Redis, a deleted database): the record in memory
            # still keeps the file from going up again, and is written back (stream.forgotten);
            # with no intent to checkpoint, nothing is done to the file meanwhile.
            self.kept.keep(record, Keep.RECORD_LOST)
            return None
        if fresh is None or fresh.stream_id != record.stream_id:
            self.drop(path, record.stream_id)  # forgotten, or a newer stream's record now
            return None
        return fresh

    def drop(self, path: str, stream_id: str) -> None:
        records = self.records()
        if path in records and records[path].stream_id == stream_id:
            del records[path]
        self.kept.forget(path)

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
