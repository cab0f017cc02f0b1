"""One stream's worker: upload whole parts while the file grows, then hand over to finalization.

Each part goes up only after the global part slot is taken (memory is bounded by parts in flight),
and is checkpointed only after S3 acknowledged it. A crash between the two costs one part.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from streamup import metrics
from streamup.after.metadata import content_type_for
from streamup.checkpoint import CheckpointStore
from streamup.checksums import md5_of
from streamup.errors import LeaseLost, NoSuchUpload, StorageError, StreamupError
from streamup.faults import crash_point
from streamup.files.budget import MAX_OPEN_FILES, FileBudget, FileGone
from streamup.files.closes import CloseWatch
from streamup.files.container import HEAD_BYTES, header_patched
from streamup.files.hashing import PrefixHash
from streamup.files.source import PartData, SourceFile
from streamup.files.writers import WriterIndex
from streamup.models import (
    CompletedRecord,
    FileState,
    PartRecord,
    ReadMark,
    Status,
    StreamRecord,
    utc_now,
)
from streamup.retry import Backoff, retrying
from streamup.s3.client import DIGEST_REFUSED, S3Storage
from streamup.s3.integrity import Capabilities, ProofMode, Proven, sent_part_mismatch
from streamup.s3.object_options import ObjectOptions
from streamup.s3.pacing import STOPPED_MESSAGE, Pacer, PrioritySlots
from streamup.s3.parts import (
    PART_COUNT_WARNING,
    Layout,
    PartSchedule,
    PartSpan,
    whole_parts_ready,
)
from streamup.s3.priority import Priority
from streamup.stream.copying import copy_or_none
from streamup.stream.extension import ExtendedLayout
from streamup.stream.lifecycle import (
    Activity,
    UnconfirmedEnd,
    check_transition,
    idle_credit_s,
    may_check,
    parts_past_end,
    should_end,
)

T = TypeVar("T")
log = structlog.get_logger("streamup")

# After a permanent error (access denied, say) the stream waits this long before trying again:
# the operator may fix the cause, and the agent must not spin.
PERMANENT_ERROR_PAUSE_S = 60.0
# A stream whose file has not grown for this long gives its descriptor up to waiting streams.
GIVE_WAY_IDLE_S = 1.0
# A failed step is tried again after about 2 s, 4 s, 8 s, ... up to the minute above.
FAILURE_BACKOFF = Backoff(first_s=2.0, factor=2.0, cap_s=PERMANENT_ERROR_PAUSE_S)


@dataclass
class StreamContext:
    """What every stream worker shares: the I/O seams and the limits."""

    storage: S3Storage
    store: CheckpointStore
    part_slots: PrioritySlots  # global: parts in flight across all streams, live ones first
    window: int  # parts in flight for one stream
    timeout_s: float
    stopping: asyncio.Event
    lease_ttl_s: float = 15.0
    writers: WriterIndex = field(default_factory=WriterIndex)
    closes: CloseWatch | None = None  # closes after writing, from inotify (files.closes)
    ffprobe_path: str | None = None
    ffprobe_timeout_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    # What this endpoint proves (s3.integrity.probe at start-up, or S3_INTEGRITY_MODE).
    integrity: Capabilities = field(default_factory=lambda: Capabilities.forced(ProofMode.NONE))
    # This agent's host: the events it writes are delivered by this host's agent, and it acts on
    # the local files of the streams it ends.
    agent_host: str = ""
    # What every object is stored with (S3_SSE, S3_STORAGE_CLASS, S3_OBJECT_TAGS, ...).
    object_options: ObjectOptions = field(default_factory=ObjectOptions)
    # Places for open recordings: a stream that waits for one holds no descriptor.
    files: FileBudget = field(default_factory=lambda: FileBudget(MAX_OPEN_FILES))
    # Asked when a write is fenced out: did the store only lose the stream? (stream.forgotten)
    restore: Callable[[StreamWorker], Awaitable[bool]] | None = None
    # BANDWIDTH_LIMIT (None when it is `off` all week: parts go up as plain bytes).
    pacer: Pacer | None = None


class StreamWorker:
    """Owns one stream from discovery (or resume) to its final status."""

    def __init__(
        self,
        ctx: StreamContext,
        record: StreamRecord,
        parts: dict[int, PartRecord],
        source: SourceFile | None,
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.parts = parts
        self.source = source
        schedule = PartSchedule(record.part_size_bytes, record.part_size_fixed)
        # An extension's first parts are copied from the completed object (stream.extension).
        self.schedule: Layout = (
            schedule if record.extends is None else ExtendedLayout.of(record.extends, schedule)
        )
        self.stalled = False
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._upload_lock = asyncio.Lock()
        self._in_flight: set[int] = set()
        self._done_below = 0  # parts 1.._done_below are all checkpointed (a scan hint)
        # The file's SHA-256, fed as parts are read; with when each sent part was read, it lets
        # the end-of-stream check skip parts that provably cannot have changed since.
        self.hash = PrefixHash()
        self.read_marks: dict[int, ReadMark] = {}
        self._read_lock = asyncio.Lock()
        self.completed_record: CompletedRecord | None = None
        self.writer_seen = False  # a process on this host was seen writing the file
        # Ended on the writer's close, before its confirmation: what the file was then
        # (stream.ending). `check_early` goes off for good once a writer came back.
        self.unconfirmed_end: UnconfirmedEnd | None = None
        self.check_early = True
        self.complete_s: float | None = None  # how long CompleteMultipartUpload took, if sent
        self.lease_lost = False  # another agent took the stream over
        self.failures = 0  # attempts of a failed step since the stream last made progress
        # Part 1 waits for the end when the writer patches the file's header then (MP4, MKV):
        # None until the file's first bytes were seen (files.container.header_patched).
        self.hold_first: bool | None = None
        self._restore_lock = asyncio.Lock()
        self._restores = 0  # times the store had lost the stream and it was written back
        self._seen_size = record.size_bytes
        self._grew_at = float("-inf")  # when the file last grew (monotonic): is it live?
        self.log = log.bind(stream_id=record.stream_id, path=record.path)

    # ----------------------------------------------------------------- plumbing

    def wake(self) -> None:
        self._wake.set()

    @property
    def priority(self) -> Priority:
        """LIVE while the file grew within STREAM_TIMEOUT_SECONDS (a recording), else BACKLOG
        (a finished file waiting): live parts go first (s3.priority)."""
        live = self.ctx.clock() - self._grew_at < self.ctx.timeout_s
        return Priority.LIVE if live else Priority.BACKLOG

    def _note_size(self, size_bytes: int) -> None:
        if size_bytes > self._seen_size:
            self._seen_size, self._grew_at = size_bytes, self.ctx.clock()

    @property
    def lag_bytes(self) -> int:
        return max(0, self.record.size_bytes - self.record.uploaded_bytes)

    async def nap(self, seconds: float) -> None:
        """Sleep until woken (a filesystem event, shutdown) or `seconds` pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))
        self._wake.clear()

    async def persist(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run an I/O step with retries; shielded so a shutdown cannot tear a checkpoint. A
        fenced-out write is tried once more if the store had only lost the stream (`restored`)."""
        step = retrying(call, on_retry=self._on_retry(what), on_recovered=self._on_recovered)
        try:
            return await asyncio.shield(step)
        except LeaseLost:
            if not await self.restored():
                raise
        return await asyncio.shield(retrying(call, on_retry=self._on_retry(what)))

    async def restored(self) -> bool:
        """The lease looked lost: True when it was only the store forgetting the stream and the
        stream is written back (ctx.restore; once for concurrent parts that all noticed)."""
        if self.ctx.restore is None:
            return False
        seen = self._restores
        async with self._restore_lock:
            if self._restores != seen:
                return True
            if not await self.ctx.restore(self):
                return False
            self._restores += 1
            return True

    def _on_retry(self, what: str) -> Callable[[StreamupError, int, float], None]:
        def note(exc: StreamupError, attempt: int, delay_s: float) -> None:
            metrics.RETRIES.labels(kind=type(exc).__name__).inc()
            self.last_error = str(exc)
            if not self.stalled:
                self.stalled = True
                self.log.warning("stream.stalled", step=what, error=str(exc))
            elif attempt % 10 == 0:
                self.log.warning("stream.still_stalled", step=what, attempts=attempt)

        return note

    def _on_recovered(self) -> None:
        if self.stalled:
            self.stalled = False
            self.last_error = None
            self.log.info("stream.resumed")

    async def check_lease(self) -> None:
        """Before a step that cannot be undone: is the stream still ours? (LeaseLost if not.)"""
        stream_id, ttl_s = self.record.stream_id, self.ctx.lease_ttl_s
        if not await self.persist(lambda: self.ctx.store.renew_lease(stream_id, ttl_s), "lease"):
            raise LeaseLost(f"stream {stream_id} is owned by another agent now")

    async def set_status(self, status: Status, **changes: object) -> None:
        check_transition(self.record.status, status)
        self.record = self.record.evolve(status=status, last_activity_at=utc_now(), **changes)
        record = self.record
        await self.persist(lambda: self.ctx.store.save_stream(record), "checkpoint")

    # ----------------------------------------------------------------- uploading

    async def ensure_upload(self) -> str:
        """Create the multipart upload once, and checkpoint its id before any part is sent."""
        async with self._upload_lock:
            if self.record.upload_id is None:
                key, ctype = self.record.key, content_type_for(self.record.path)
                crc, options = self.ctx.integrity.checksums_accepted, self.ctx.object_options
                upload_id = await self.persist(
                    lambda: self.ctx.storage.create_upload(key, ctype, crc32c=crc, options=options),
                    "create upload",
                )
                self.record = self.record.evolve(
                    upload_id=upload_id, checksum_algorithm="CRC32C" if crc else ""
                )
                record = self.record
                await self.persist(lambda: self.ctx.store.save_stream(record), "checkpoint")
            return self.record.upload_id  # type: ignore[return-value]

    async def send(self, data: PartData, *, copy_from: int | None = None) -> PartRecord:
        """Upload one part, proven (s3.integrity), retrying while the network is gone or the
        proof fails, and checkpoint it. Only a proven part is ever recorded.

        A part the server can make from bytes it holds is copied instead (stream.copying): the
        parts an extension keeps, or `copy_from`, the offset of the part's bytes in the object at
        the key (a faststart rebuild's temporary object). A copy that cannot be proven is sent."""
        upload_id = await self.ensure_upload()
        if copy_from is None and self.is_copy(data.span.number):
            copy_from = data.span.offset_bytes
        span = data.span
        started = self.ctx.clock()
        proven = None
        if copy_from is not None:
            first = copy_from
            proven = await self.persist(
                lambda: self._copy_proven(upload_id, data, first), f"copy part {span.number}"
            )
        copied = proven is not None
        if proven is None:
            proven = await self.persist(
                lambda: self._upload_proven(upload_id, data), f"upload part {span.number}"
            )
        crash_point("after_part_copy" if copied else "after_part_upload")
        if not copied:
            self.record = self.record.evolve(bytes_sent=self.record.bytes_sent + span.size_bytes)
        part = PartRecord(
            span.number, span.offset_bytes, span.size_bytes, proven.etag,
            data.md5.hex() if data.md5 is not None else "", utc_now(),
            crc32c_hex=data.crc32c.hex(), copied=copied, proof=proven.proof,
        )  # fmt: skip
        await self.keep_part(part)
        self.read_marks[span.number] = data.read_at
        metrics.PART_SECONDS.observe(self.ctx.clock() - started)
        (metrics.BYTES_COPIED if copied else metrics.BYTES_UPLOADED).inc(span.size_bytes)
        metrics.PARTS_UPLOADED.inc()
        self.log.debug("part.uploaded", part=span.number, size_bytes=span.size_bytes)
        if span.number == PART_COUNT_WARNING:
            self.log.warning(
                "stream.near_part_limit",
                part=span.number,
                hint="S3 allows 10,000 parts; raise CHUNK_SIZE_BYTES or unset PART_SIZE_FIXED",
            )
        return part

    def is_copy(self, number: int) -> bool:
        """Part `number` is made by the server from the object this stream extends."""
        return isinstance(self.schedule, ExtendedLayout) and self.schedule.is_copy(number)

    async def _copy_proven(self, upload_id: str, data: PartData, first: int) -> Proven | None:
        return await copy_or_none(
            self.ctx.storage, self.record.key, upload_id, data, self.ctx.integrity, first=first
        )

    async def _upload_proven(self, upload_id: str, data: PartData) -> Proven:
        number = data.span.number
        mode = self.proof_mode
        # In `reported` mode the server is asked for the CRC32C of what it received instead.
        ask = mode is ProofMode.REPORTED
        crc = data.crc32c if self.record.checksum_algorithm and not ask else None
        pacer = self.ctx.pacer  # a new paced body for every attempt: a body is sent only once
        body = data.body if pacer is None else pacer.body(data.body, self.priority)
        try:
            answer = await self.ctx.storage.upload_part(
                self.record.key, upload_id, number, body, crc32c=crc, md5=data.md5, ask_crc32c=ask
            )
        except StorageError as exc:
            if exc.code in DIGEST_REFUSED:  # the server's own check caught damaged bytes
                self._proof_failed(number, "refused by the server", str(exc))
            if pacer is not None and pacer.stopped:  # the grace is over: not retried
                raise StorageError(STOPPED_MESSAGE, code="Stopping") from exc
            raise
        failed = sent_part_mismatch(mode, answer, md5=data.md5, crc32c=data.crc32c)
        if failed is not None:
            reason, detail = failed
            self._proof_failed(number, reason, detail)
            raise StorageError(
                f"part {number} of {self.record.key!r}: the server stored other bytes than"
                f" were sent ({detail})",
                code="ProofFailed",
                retryable=True,
            )
        return Proven(answer.etag, mode.proof)

    def _proof_failed(self, number: int, reason: str, detail: str) -> None:
        metrics.PARTS_PROOF_FAILED.inc()
        self.log.warning("part.proof_failed", part=number, reason=reason, detail=detail)

    @property
    def proof_mode(self) -> ProofMode:
        """How this stream's parts are proven (an upload from before checksums: by MD5)."""
        return self.ctx.integrity.mode_for(with_checksum=bool(self.record.checksum_algorithm))

    @property
    def with_md5(self) -> bool:
        """Whether parts read for sending need their MD5 (the proof uses it)."""
        return self.proof_mode.needs_md5

    async def read(self, span: PartSpan, *, with_md5: bool) -> PartData | None:
        """Read a part, feed it to the running SHA-256, then take its MD5 if asked.

        A stream reads one part at a time, in the order asked, so the SHA-256 sees the file in
        order; the MD5 (the slow hash) runs after the lock is released, beside the next read.
        """
        assert self.source is not None
        async with self._read_lock:
            data = await self.source.read_part(span, with_md5=False)
            if data is None:
                return None
            self.hash.feed(span, data.body, data.crc32c.hex())
        if with_md5:
            md5 = await asyncio.to_thread(md5_of, data.body)
            data = dataclasses.replace(data, md5=md5)
        return data

    async def keep_part(self, part: PartRecord) -> None:
        """Checkpoint a part S3 holds, with the stream's progress, in one store write."""
        self.parts[part.number] = part
        uploaded = sum(p.size_bytes for p in self.parts.values())
        self.record = self.record.evolve(uploaded_bytes=uploaded, last_activity_at=part.uploaded_at)
        stream_id = self.record.stream_id
        await self.persist(
            lambda: self.ctx.store.record_part(stream_id, part, uploaded, part.uploaded_at),
            "checkpoint",
        )
        if self.failures:
            await self.recovered()

    async def _read_and_send(self, span: PartSpan) -> None:
        async with self.ctx.part_slots.holding(self.priority):
            data = await self.read(span, with_md5=self.with_md5)
            if data is not None:  # None: the file shrank meanwhile; the next pass sees it
                await self.send(data)

    async def upload_ready_parts(self) -> None:
        """Send every whole part the file holds, up to `window` at a time, until none is left.

        The file is re-measured as parts finish, so a backlog (a finished file copied in) keeps
        the window full instead of stalling at batch boundaries.
        """
        assert self.source is not None
        if self.record.rebuild:
            return  # its parts follow the rebuild's plan, not the schedule (stream.rebuild)
        pending: dict[asyncio.Task[None], int] = {}
        try:
            while True:
                size = self.source.fstat().size_bytes
                self._note_size(size)
                done_or_held = self.parts.keys() | await self.held_parts(size)
                busy = done_or_held | self._in_flight
                room = self.ctx.window - len(pending)
                if room > 0 and not self.ctx.stopping.is_set():
                    while self._done_below + 1 in done_or_held:
                        self._done_below += 1
                    ready = whole_parts_ready(
                        self.schedule, size, busy, limit=room, first=self._done_below + 1
                    )
                    for span in ready:
                        self._in_flight.add(span.number)
                        pending[asyncio.create_task(self._read_and_send(span))] = span.number
                if not pending:
                    return
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._in_flight.discard(pending.pop(task))
                    task.result()
        finally:
            # Let in-flight parts land (their checkpoints are shielded) before giving up.
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                self._in_flight.difference_update(pending.values())

    async def held_parts(self, size_bytes: int) -> set[int]:
        """The parts kept back while the file grows: part 1 when the writer will patch it at
        the end (sent once, by the end-of-stream check). Its bytes stay safe in the file, and a
        restart reads them from there."""
        if self.hold_first is None and size_bytes >= self.schedule.size_of(1):
            assert self.source is not None
            head = await self.source.read_part(PartSpan(1, 0, HEAD_BYTES), with_md5=False)
            self.hold_first = head is not None and header_patched(head.body)
            if self.hold_first:
                self.log.info("stream.header_held", part=1)
        return {1} if self.hold_first and 1 not in self.parts else set()

    async def forget_parts(self, numbers: list[int]) -> None:
        """Drop part records (they will be sent again, or are not wanted), in memory and in the
        checkpoint, with the stream's progress, in one store write."""
        uploaded = self.drop_from_memory(numbers)
        stream_id = self.record.stream_id
        await self.persist(
            lambda: self.ctx.store.remove_parts(stream_id, numbers, uploaded), "checkpoint"
        )

    def drop_from_memory(self, numbers: list[int]) -> int:
        """Forget part records in memory only; the stream's progress in bytes after that."""
        for number in numbers:
            del self.parts[number]
            self.read_marks.pop(number, None)
        self._done_below = min(self._done_below, min(numbers, default=self._done_below + 1) - 1)
        uploaded = sum(p.size_bytes for p in self.parts.values())
        self.record = self.record.evolve(uploaded_bytes=uploaded)
        return uploaded

    async def drop_parts_past_end(self, size_bytes: int) -> None:
        gone = parts_past_end(self.parts.values(), size_bytes)
        if gone:
            self.hash.truncate(min(gone))  # those bytes are gone from the file
            await self.forget_parts(gone)
            self.log.info("stream.shrank", size_bytes=size_bytes, dropped_parts=gone)

    async def restart_upload(self, reason: str) -> None:
        """S3 lost the upload (NoSuchUpload): start a fresh one; every part goes up again."""
        self.log.warning("stream.upload_restarted", reason=reason)
        await self.forget_parts(list(self.parts))
        self.record = self.record.evolve(upload_id=None)
        record = self.record
        await self.persist(lambda: self.ctx.store.save_stream(record), "checkpoint")

    # ----------------------------------------------------------------- the loop

    async def grow(self) -> bool:
        """Upload while the file grows. True when it went idle; False when shutting down."""
        assert self.source is not None
        tick_s = min(0.5, self.ctx.timeout_s / 4)
        first = self.source.fstat()
        mtime_age_s = time.time() - first.mtime_ns / 1e9
        credit_s = idle_credit_s(mtime_age_s, self.ctx.timeout_s, confirm_s=tick_s)
        activity = Activity.first(first, self.ctx.clock(), credit_s=credit_s)
        self._seen_size = max(self._seen_size, first.size_bytes)  # growth is what comes after
        self._grew_at = max(self._grew_at, self.ctx.clock() - max(mtime_age_s, 0.0))
        looked = False  # the end is judged only once the file was seen across one nap at least
        while not self.ctx.stopping.is_set():
            state = self.source.fstat()
            activity = activity.observe(state, self.ctx.clock(), changed_s=self._changed_s(state))
            if state.size_bytes != self.record.size_bytes or state.mtime_ns != self.record.mtime_ns:
                self.record = self.record.evolve(
                    size_bytes=state.size_bytes, mtime_ns=state.mtime_ns
                )
            try:
                await self.drop_parts_past_end(state.size_bytes)
                await self.upload_ready_parts()
            except NoSuchUpload as exc:
                await self.restart_upload(str(exc))
                continue
            except StorageError as exc:
                await self.pause_after(exc)
                continue
            if looked and await self._ended(activity):
                return True
            looked = True
            if (
                activity.idle_for_s(self.ctx.clock()) >= GIVE_WAY_IDLE_S
                and self.ctx.files.contended
            ):
                await self.give_way()
            await self.nap(tick_s)
        return False

    async def _ended(self, activity: Activity) -> bool:
        """Is the recording over, or may its end-of-stream check start while the writer's close
        is confirmed (`unconfirmed_end`, stream.ending)? The file is looked at afresh: sending
        the parts ready may have taken a while."""
        assert self.source is not None
        writer_now = await self.ctx.writers.is_written(self.record.identity)
        state, ctime_ns = self.source.fstat(), self.source.ctime_ns()
        # A writer is seen in /proc, or by its close after the last change (inotify).
        closes = self.ctx.closes
        closed = closes is not None and closes.closed_after(self.record.path, state.mtime_ns)
        self.writer_seen = seen = self.writer_seen or bool(writer_now) or closed
        activity = activity.observe(state, self.ctx.clock(), changed_s=self._changed_s(state))
        idle_s, timeout_s = activity.idle_for_s(self.ctx.clock()), self.ctx.timeout_s
        self.unconfirmed_end = None
        if should_end(idle_s, timeout_s, writer_seen=seen, writer_now=writer_now):
            return True
        if self.check_early and may_check(
            idle_s, timeout_s, writer_seen=seen, writer_now=writer_now
        ):
            self.unconfirmed_end = UnconfirmedEnd(activity, state, ctime_ns)
            return True
        return False

    def _changed_s(self, state: FileState) -> float | None:
        """When the file last changed by its mtime, on the loop's clock; None where the mtime is
        not this host's clock (a network filesystem stamps the server's)."""
        if self.source is None or not self.source.local:
            return None
        return self.ctx.clock() - (time.time() - state.mtime_ns / 1e9)

    async def give_way(self) -> None:
        """Idle while other streams wait for a descriptor: close the file, queue for a place
        again, reopen it if the path still names it (FileGone if not)."""
        assert self.source is not None
        self.source.close()
        self.source = None
        record = self.record
        self.source = await self.ctx.files.open(record.path, record.identity, same_device=True)
        if self.source is None:
            raise FileGone(f"{record.path} left its path while its stream waited for its turn")

    async def pause_after(self, exc: BaseException) -> None:
        """A step failed with an error that retrying at once does not cure (access denied, a
        bug): one log line for the whole episode (the traceback at DEBUG), the error in the
        checkpoint for `status`, and a pause that grows with each attempt."""
        self.failures += 1
        delay_s = FAILURE_BACKOFF.delay_s(self.failures)
        error = str(exc) if isinstance(exc, StreamupError) else f"{type(exc).__name__}: {exc}"
        metrics.FAILURES.labels(status=self.record.status.value).inc()
        if self.failures == 1:
            self.log.error("stream.failed_step", error=error, retry_in_s=round(delay_s, 1))
        else:
            self.log.debug("stream.failed_again", error=error, attempt=self.failures,
                           retry_in_s=round(delay_s, 1))  # fmt: skip
        self.log.debug("stream.failure_traceback", exc_info=exc)
        self.last_error = error
        await self._keep_error(error)
        await self.pause(delay_s)

    async def pause(self, seconds: float) -> None:
        """Wait `seconds` or until shutdown; unlike `nap`, a file event does not end it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), seconds)

    async def recovered(self) -> None:
        """The stream made progress again (S3 took a part): the failure episode is over."""
        self.log.info("stream.recovered", attempts=self.failures)
        self.failures = 0
        self.last_error = None
        await self._keep_error(None)

    async def _keep_error(self, error: str | None) -> None:
        # `streamup status` reads the checkpoint: the error goes there too. Best effort: the store
        # may be what fails, and reporting must not add a failure of its own.
        if self.record.error == error:
            return
        self.record = self.record.evolve(error=error)
        record = self.record
        with contextlib.suppress(StreamupError):
            await self.persist(lambda: self.ctx.store.save_stream(record), "checkpoint")
