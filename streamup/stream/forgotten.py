"""A checkpoint store that lost a stream this agent still works on (Redis flushed, or restarted
without persistence): notice it, write back what the agent knows, go on with the same upload.

The store's fence cannot tell such a loss from another agent having finished the stream (both
leave neither lease nor record), so it raises LeaseLost. Before giving up, the worker asks here.
The store is taken to have lost the stream when it has neither the stream's record nor anyone's
lease on it, and S3 still holds the stream's multipart upload (a finished stream's upload is
completed or aborted: ListParts says NoSuchUpload). Then the lease is taken again, and the
record and every part S3 holds with the ETag the agent recorded are written back; parts S3
lacks are dropped from memory and go up again. Nothing is sent again that S3 has.

A deleted SQLite file raises nothing (the connection writes on into the unlinked file): the
agent looks for it every few seconds and rebuilds the file the same way (`rebuild_lost_sqlite`),
then reads the deleted file, still open, for what memory lacks (SqliteStore.replace_lost).

Completed-file records (what keeps a finished file from being uploaded again after a restart)
go back too: into the rebuilt SQLite file, and into Redis once a stream was written back
(`CompletedWriteBack`). The recent-completions history goes back into SQLite only (Redis has
lost it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog

from streamup.checkpoint import CheckpointStore
from streamup.checkpoint.base import PresenceMarks
from streamup.checkpoint.sqlite import SqliteStore
from streamup.errors import NoSuchUpload, StreamupError
from streamup.faults import crash_point
from streamup.models import CompletedRecord, PartRecord, StreamRecord
from streamup.retry import retrying
from streamup.s3.client import RemotePart
from streamup.stream.worker import StreamWorker

log = structlog.get_logger("streamup")
Acquire = Callable[[], Awaitable[bool]]
STORE_CHECK_S = 2.0  # how often the store is looked at for a loss


async def restore_forgotten(
    worker: StreamWorker, acquire: Acquire, restored: Callable[[], None] = lambda: None
) -> bool:
    """True when the store had lost the stream and now holds it again, leased to this agent
    (then `restored` is called: the store forgot more than this stream, likely); False when the
    stream is not this agent's any more (the caller backs off as before)."""
    store, stream_id = worker.ctx.store, worker.record.stream_id
    try:
        if await retrying(lambda: store.load_stream(stream_id)) is not None:
            return False
        if await retrying(lambda: store.lease_owner(stream_id)) is not None:
            return False  # another agent holds it: a real takeover
        remote = await _remote_parts(worker)
        if remote is None or not await retrying(acquire):
            return False
        kept = await _write_back(worker, remote)
    except StreamupError as exc:
        worker.log.warning("checkpoint.restore_failed", error=str(exc))
        return False
    worker.log.warning(
        "checkpoint.stream_restored",
        store=store.name,
        parts=kept,
        detail="the checkpoint store had lost this stream; written back from memory and"
        " ListParts, the upload goes on",
    )
    restored()
    return True


async def _remote_parts(worker: StreamWorker) -> dict[int, RemotePart] | None:
    """What S3 holds of the stream's upload; {} before the upload exists; None when it is gone."""
    record = worker.record
    upload_id = record.upload_id
    if upload_id is None:
        return {}
    storage = worker.ctx.storage
    try:
        return await retrying(lambda: storage.list_parts(record.key, upload_id))
    except NoSuchUpload:
        return None


async def _write_back(worker: StreamWorker, remote: dict[int, RemotePart]) -> int:
    """Write the record and the parts S3 holds as recorded; the others are dropped."""
    known = sorted(
        (p for n, p in worker.parts.items() if n in remote and remote[n].etag == p.etag),
        key=lambda p: p.number,
    )
    worker.drop_from_memory([n for n in worker.parts if n not in {p.number for p in known}])
    record = worker.record.evolve(uploaded_bytes=0)
    await retrying(lambda: worker.ctx.store.save_stream(record))
    # A crash here leaves the record without its parts: the restart's reconcile adopts from
    # ListParts the parts whose MD5 is the file's, so nothing is sent twice.
    crash_point("after_restored_record")
    total = 0
    for part in known:
        total += part.size_bytes
        await _record(worker, part, total)
    return len(known)


async def _record(worker: StreamWorker, part: PartRecord, uploaded_bytes: int) -> None:
    store, stream_id = worker.ctx.store, worker.record.stream_id
    await retrying(lambda: store.record_part(stream_id, part, uploaded_bytes, part.uploaded_at))


async def rebuild_lost_sqlite(
    store: SqliteStore, workers: list[StreamWorker], completed: Iterable[CompletedRecord] = ()
) -> None:
    """The SQLite file was deleted under the running agent (nothing it writes would survive a
    restart): a new file, holding every stream the agent works on with the parts S3 holds as
    recorded and the completed-file records it holds (`completed`, of files still there),
    swapped in as one step; one log line."""
    snapshot: list[tuple[StreamRecord, list[PartRecord]]] = []
    for worker in workers:
        remote = await _remote_parts(worker)
        if remote is None:
            continue  # its upload is gone: its own next step finds that out, as before
        known = [
            p for n, p in sorted(worker.parts.items()) if n in remote and remote[n].etag == p.etag
        ]
        worker.drop_from_memory([n for n in worker.parts if n not in {p.number for p in known}])
        snapshot.append((worker.record, known))
    done = still_there(completed)
    held = await retrying(lambda: store.replace_lost(snapshot, done, keep_completed=file_there))
    log.warning(
        "checkpoint.store_rebuilt",
        path=str(store.db_path),
        streams=len(snapshot),
        parts=sum(len(parts) for _, parts in snapshot),
        completed_files=held,
        detail="the SQLite file was deleted; a new one holds what this agent knows and what"
        " the deleted file still held",
    )


def still_there(records: Iterable[CompletedRecord]) -> list[CompletedRecord]:
    """The records whose path still names a file: a record of a file deleted or moved since (the
    local-file action forgets it a moment later) would outlive its file."""
    return [record for record in records if file_there(record.path)]


def file_there(path: str) -> bool:
    """A completed-file record is worth writing back: its path names something still."""
    return os.path.lexists(path)


class CompletedWriteBack:
    """Writes the completed-file records the agent holds in memory back to a Redis that forgot
    them (flushed, restarted empty), so that a restart does not upload those files again.

    Asked after every stream written back (`restore_forgotten`): one write covers every stream
    that asked before it began, so a thousand streams restored in one renewal round cost one or
    two writes; StoreWatch asks too, for an idle agent. Each record is written only where the
    store has none for its path now. A write the store refuses for good is one error line until
    one succeeds: the records stay in memory (this agent does not upload those files again), and
    the next look of StoreWatch or stream written back tries again.
    """

    def __init__(
        self, store: CheckpointStore, records: Callable[[], Mapping[str, CompletedRecord]]
    ) -> None:
        self.store = store
        self._records = records
        self._lock = asyncio.Lock()
        self._asked = 0
        self._covered = 0  # asks that a write begun after them answers
        self._refused = False  # the last write was refused (and said so)

    def records(self) -> list[CompletedRecord]:
        """The completed-file records the agent holds in memory."""
        return list(self._records().values())

    async def write_back(self) -> bool:
        """True once the store holds the records (this write, or one begun after the ask);
        False when the store refused them (said once, in one error line)."""
        self._asked += 1
        asked = self._asked
        async with self._lock:
            if self._covered >= asked:
                return True  # a write begun after this ask succeeded (a failed one resets)
            self._covered = self._asked
            records = still_there(self.records())
            try:
                written = await retrying(lambda: self.store.restore_completed_files(records))
            except StreamupError as exc:
                self._covered = 0
                if self._refused:
                    return False  # said once, at the first refusal
                self._refused = True
                log.error(
                    "checkpoint.completed_restore_failed",
                    store=self.store.name,
                    files=len(records),
                    error=str(exc),
                    detail="the records are kept in memory; after a restart these files would"
                    " be uploaded again. Tried again at the next check of the store",
                )
                return False
            self._refused = False
        if written:
            log.warning(
                "checkpoint.completed_restored",
                store=self.store.name,
                files=written,
                detail="the checkpoint store had lost these completed files' records; written"
                " back from memory, so a restart does not upload them again",
            )
        return True


class StoreWatch:
    """Notices within seconds a checkpoint store that lost what it held while the agent runs,
    busy or idle, and puts back what the agent knows.

    A deleted SQLite file is rebuilt (`rebuild_lost_sqlite`). A Redis flushed or restarted
    without persistence fails no call: the agent's mark (PresenceMarks), left at start-up before
    the completed-file records were loaded, is gone, so those records go back from memory
    (CompletedWriteBack), until the store takes them; streams in flight are written back by
    their own next fenced write (`restore_forgotten`)."""

    def __init__(
        self,
        store: CheckpointStore,
        agent_id: str,
        completed: CompletedWriteBack,
        workers: Callable[[], list[StreamWorker]],
    ) -> None:
        self.store = store
        self.agent_id = agent_id
        self.completed = completed
        self.workers = workers
        self._owed = False  # a write-back the store has not taken yet

    async def start(self) -> None:
        """Leave the mark; before the completed-file records are loaded, so that a loss after
        the load is seen."""
        store = self.store
        if isinstance(store, PresenceMarks):
            await retrying(lambda: store.mark_present(self.agent_id))

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), STORE_CHECK_S)
            if not stopping.is_set():
                await self.check()

    async def check(self) -> None:
        store = self.store
        if isinstance(store, SqliteStore):
            if store.file_lost():
                try:
                    await rebuild_lost_sqlite(store, self.workers(), self.completed.records())
                except StreamupError as exc:
                    log.error("checkpoint.rebuild_failed", error=str(exc))
        elif isinstance(store, PresenceMarks):
            await self._look_for_mark(store)

    async def _look_for_mark(self, store: PresenceMarks) -> None:
        marked = False
        try:
            if not self._owed and not await store.still_marked(self.agent_id):
                log.warning(
                    "checkpoint.store_emptied",
                    store=self.store.name,
                    detail="this agent's mark is gone: the store was flushed or restarted"
                    " without persistence; the records of completed files go back from memory",
                )
                self._owed = True
            if not self._owed:
                return
            await store.mark_present(self.agent_id)  # first: a loss during the write-back shows
            marked = True
        except StreamupError as exc:  # an outage, or a store refusing writes: said elsewhere
            log.debug("checkpoint.mark_failed", error=str(exc))
            if not self._owed:
                return
        written = await self.completed.write_back()
        self._owed = not (written and marked)
