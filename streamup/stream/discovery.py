"""A path the watcher saw becomes a claimed stream: the running stream woken, or, for a new
recording, its key (S3_KEY_TEMPLATE, never another object's) or the extension of the object of
a completed file that grew (`stream.extension`), its record, and the claim with its lease in
one store step. What is claimed is handed to `launch`; a file already completed, another
agent's stream or an unreadable file is settled here. A file the store lost is first looked
for in S3: a finished one as an object (`stream.recognition`), a recording as an upload in
progress it resumes (`stream.adoption`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from streamup.errors import StorageError, StreamupError
from streamup.faults import crash_point
from streamup.files.budget import out_of_descriptors
from streamup.files.source import SourceFile, readable, stat_path
from streamup.files.watcher import relative_key_path
from streamup.models import (
    Claim,
    CompletedRecord,
    Extension,
    FileState,
    Status,
    StreamRecord,
    utc_now,
)
from streamup.retry import retrying
from streamup.s3.keys import KeyFields
from streamup.s3.parts import PartSchedule
from streamup.s3.placement import KeyPlanner, Placement
from streamup.settings import Settings
from streamup.stream.adoption import Adoption
from streamup.stream.extension import plan_extension, worth_checking
from streamup.stream.ownership import Ownership
from streamup.stream.recognition import Recognition
from streamup.stream.worker import StreamContext, StreamWorker

log = structlog.get_logger("streamup")
# Work put off by a passing condition is said once per this many seconds, not once per file.
DEFERRED_REPEAT_S = 60.0


class Chores:
    """Work nobody awaits (a new file's start, a gone file's record, a lost lease's check),
    kept referenced until it ends. A failed chore is one log line, never "Task exception was
    never retrieved"; what it did not do, the next scan or event asks for again."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._deferred_said_at = -DEFERRED_REPEAT_S  # "stream.deferred" is said once a minute

    def spawn(self, chore: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(chore)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if out_of_descriptors(exc) or (isinstance(exc, StreamupError) and exc.retryable):
            self.note_deferred("", exc)
            return
        log.error("agent.chore_failed", error=f"{type(exc).__name__}: {exc}")
        log.debug("agent.chore_traceback", exc_info=exc)

    def note_deferred(self, path: str, exc: BaseException) -> None:
        """Work put off by a passing condition (out of descriptors): said once per episode."""
        now = time.monotonic()
        if now - self._deferred_said_at >= DEFERRED_REPEAT_S:
            self._deferred_said_at = now
            error = exc.strerror if isinstance(exc, OSError) else str(exc)
            hint = "raise the open-files limit (ulimit -n); the next scan tries again"
            log.error("stream.deferred", path=path, error=error, hint=hint)


class Discovery:
    """Turns the watcher's paths into streams. `workers` and `by_path` (path -> id of the stream
    that owns it) are the agent's, shared; `completed()` its completed records (path -> record).
    """

    def __init__(
        self,
        settings: Settings,
        ctx: StreamContext,
        ownership: Ownership,
        keys: KeyPlanner,
        *,
        workers: dict[str, StreamWorker],
        by_path: dict[str, str],
        completed: Callable[[], dict[str, CompletedRecord]],
        launch: Callable[[StreamWorker, bool], None],
        chores: Chores,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.ownership = ownership
        self.keys = keys
        self.workers = workers
        self.by_path = by_path
        self._completed = completed
        self._launch = launch
        self._chores = chores
        self.starting: set[str] = set()  # paths whose stream is being started
        self.recognition = Recognition(
            ctx.storage, keys.template, host=ownership.host, started_ns=time.time_ns()
        )
        self.adoption = Adoption(ctx.storage, ctx.store, keys.template)
        self._unreadable: dict[str, FileState] = {}

    def on_scan(self, paths: list[str]) -> None:
        """A scan's paths; a completed file no longer among them is gone: its record has done
        its job (it would never match again)."""
        seen = set(paths)
        for path in paths:
            self.observe(path)
        completed = self._completed()
        for path in [p for p in completed if p not in seen]:
            del completed[path]
            self._chores.spawn(self._forget(path))

    async def _forget(self, path: str) -> None:
        with contextlib.suppress(StreamupError):
            await self.ctx.store.forget_completed_file(path)

    def observe(self, path: str) -> None:
        """A hint that `path` changed: wake its stream, or start one for a new recording."""
        if self.ctx.stopping.is_set() or path in self.starting:
            return
        state = stat_path(path)
        if state is not None and self.ownership.is_foreign(path, state.identity.inode):
            return  # another agent's stream; we stand by for it
        stream_id = self.by_path.get(path)
        if stream_id is not None:
            worker = self.workers[stream_id]
            worker.wake()
            if state is None or state.identity == worker.record.identity:
                return
            # Another file took the path: the old stream ends on its own (it holds its file
            # open); the new file is a new recording.
            del self.by_path[path]
        if state is None:
            return
        done = self._completed().get(path)
        if done is not None and done.matches(state):
            return
        if self._unreadable.get(path) == state:
            return
        self.starting.add(path)
        self._chores.spawn(self._start(path, state))

    async def _start(self, path: str, state: FileState) -> None:
        try:
            if not self._readable(path, state):
                return
            stream_id = str(uuid.uuid4())
            relative = relative_key_path(self.settings.watch_dir, path)
            now = utc_now()
            fields = KeyFields(
                self.settings.s3_key_prefix, stream_id, relative, self.ownership.host, now
            )
            extension = await self._extension(path, state)
            if path not in self._completed():  # no record: the store may have lost it
                if await self._recognised(fields, path, state):
                    if self._completed()[path].matches(state):
                        return
                    extension = await self._extension(path, state)  # it grew since
                elif await self._take_up_lost_upload(fields, path, state):
                    return
            extends, placement = extension or (None, await self._place(fields, path, state))
            if placement is None:
                return
            record = self._record(fields, path, state, placement, extends)
            await self._claim(StreamWorker(self.ctx, record, {}, None), placement, state)
        finally:
            self.starting.discard(path)

    def _readable(self, path: str, state: FileState) -> bool:
        exc = readable(path)  # the file is opened when its turn comes (files.budget)
        if exc is None:
            self._unreadable.pop(path, None)
            return True
        if out_of_descriptors(exc):
            # Out of descriptors, not a bad file: the next scan tries again.
            self._chores.note_deferred(path, exc)
            return False
        self._unreadable[path] = state
        log.error(
            "stream.unreadable",
            path=path,
            error=exc.strerror,
            hint="fix the file's permissions; it is retried when it changes",
        )
        return False

    def _record(
        self,
        fields: KeyFields,
        path: str,
        state: FileState,
        placement: Placement,
        extends: Extension | None,
    ) -> StreamRecord:
        s = self.settings
        return StreamRecord(
            stream_id=fields.stream_id,
            path=path,
            relative_path=fields.relative_path,
            bucket=s.s3_bucket_name,
            key=placement.key,
            key_collision_of=placement.collision_of,
            status=Status.ACTIVE,
            identity=state.identity,
            part_size_bytes=s.chunk_size_bytes,
            part_size_fixed=s.part_size_fixed,
            started_at=fields.started,
            last_activity_at=fields.started,
            size_bytes=state.size_bytes,
            mtime_ns=state.mtime_ns,
            host=self.ownership.host,
            extends=extends,
        )

    async def _claim(
        self, worker: StreamWorker, placement: Placement, state: FileState, *, resumed: bool = False
    ) -> None:
        record = worker.record
        try:
            # The lease is taken in the claim's own step: no agent can take the stream
            # over between the two (the fleet race of two agents finding one file).
            owner, ttl_s = self.ownership.agent_id, self.ownership.ttl_s
            claim, known_id = await worker.persist(
                lambda: self.ctx.store.claim_stream(record, owner=owner, ttl_s=ttl_s),
                "checkpoint",
            )
        finally:
            self.keys.release(record.key)
        if claim is not Claim.NEW or not await self.ownership.acquire(known_id):
            self._settle_claim(claim, known_id, record.path, state)
            return
        if placement.collision_of:
            worker.log.warning("stream.key_collision", key=record.key,
                               key_collision_of=placement.collision_of)  # fmt: skip
        extends = record.extends
        worker.log.info("stream.discovered", key=record.key,
                        extends=extends.stream_id if extends else None)  # fmt: skip
        self._launch(worker, resumed)

    async def _extension(self, path: str, state: FileState) -> tuple[Extension, Placement] | None:
        """A completed file that grew: the extension of its object (stream.extension) at its key,
        when the file still begins with that object and the key still holds it; None: a new
        stream at a new key."""
        done = self._completed().get(path)
        if done is None or not worth_checking(done, state):
            return None
        try:
            remote = await retrying(lambda: self.ctx.storage.head_object(done.key))
        except StorageError as exc:
            log.warning("stream.not_extended", path=path, reason=str(exc))
            return None
        sha = await self._prefix_sha256(path, state, done.size_bytes)
        there = None if remote is None else (remote.size_bytes, remote.etag)
        schedule = PartSchedule(self.settings.chunk_size_bytes, self.settings.part_size_fixed)
        plan = plan_extension(done, schedule, remote=there, prefix_sha256=sha)
        if isinstance(plan, str):
            log.info("stream.not_extended", path=path, key=done.key, reason=plan)
            return None
        log.info("stream.extending", path=path, key=done.key, from_stream_id=done.stream_id,
                 from_size_bytes=done.size_bytes, size_bytes=state.size_bytes)  # fmt: skip
        return plan, Placement(done.key)

    async def _take_up_lost_upload(self, fields: KeyFields, path: str, state: FileState) -> bool:
        """A recording S3 holds the beginning of, in an upload the store lost: resumed from it
        (stream.adoption)."""
        upload = await self.adoption.lost_upload(fields, path, state)
        if upload is None:
            return False
        search = self.keys.template.search(fields)
        stream_id = search.stream_id_of(upload.key) if search is not None else None
        if stream_id is not None:  # the key names the stream: keep its id
            fields = dataclasses.replace(fields, stream_id=stream_id)
        record = self._record(fields, path, state, Placement(upload.key), None).evolve(
            upload_id=upload.upload_id, checksum_algorithm=upload.checksum_algorithm
        )
        crash_point("before_lost_upload_claimed")
        await self._claim(StreamWorker(self.ctx, record, {}, None), Placement(upload.key), state,
                          resumed=True)  # fmt: skip
        return True

    async def _recognised(self, fields: KeyFields, path: str, state: FileState) -> bool:
        """A finished file S3 holds already, though the store has no record of it: recorded as
        completed, not uploaded again (stream.recognition)."""
        record = await self.recognition.recognise(fields, path, state)
        if record is None:
            return False
        crash_point("before_recognised_record")
        self._completed()[path] = record
        try:
            await retrying(lambda: self.ctx.store.restore_completed_files([record]))
        except StreamupError as exc:  # kept in memory: not uploaded again while this agent runs
            log.error("checkpoint.recognised_unrecorded", path=path, error=str(exc))
        return True

    async def _prefix_sha256(self, path: str, state: FileState, size_bytes: int) -> str | None:
        """The SHA-256 of the file's first bytes, read through a descriptor held only for it
        (a new stream opens its file when its turn comes); None when the file is shorter or
        cannot be read now (then it is not extended: a new stream at a new key)."""
        try:
            source = SourceFile.reopen(path, state.identity, same_device=True)
        except OSError as exc:
            log.warning("stream.not_extended", path=path, reason=exc.strerror)
            return None
        if source is None:
            return None
        try:
            return await source.sha256_of_prefix(size_bytes)
        finally:
            source.close()

    async def _place(self, fields: KeyFields, path: str, state: FileState) -> Placement | None:
        """The new stream's key (S3_KEY_TEMPLATE, never another object's), or None."""
        try:
            return await self.keys.place(fields, [w.record.key for w in self.workers.values()])
        except (ValueError, StreamupError) as exc:
            self._unreadable[path] = state
            log.error("stream.no_key", path=path, error=str(exc),
                      hint="fix S3_KEY_TEMPLATE; the file is retried when it changes")  # fmt: skip
            return None

    def _settle_claim(self, claim: Claim, stream_id: str, path: str, state: FileState) -> None:
        """The file is not ours to start: completed already, or another agent's stream."""
        if claim is Claim.COMPLETED:
            self._completed()[path] = CompletedRecord(
                stream_id=stream_id, path=path, bucket=self.settings.s3_bucket_name, key="",
                status=Status.COMPLETED, identity=state.identity, size_bytes=state.size_bytes,
                mtime_ns=state.mtime_ns, completed_at=utc_now(),
            )  # fmt: skip
        elif stream_id not in self.workers:
            self.ownership.watch(stream_id, path, state.identity.inode)
