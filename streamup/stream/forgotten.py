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
agent looks for it every few seconds and rebuilds the file the same way (`rebuild_lost_sqlite`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from streamup.checkpoint.sqlite import SqliteStore
from streamup.errors import NoSuchUpload, StreamupError
from streamup.faults import crash_point
from streamup.models import PartRecord, StreamRecord
from streamup.retry import retrying
from streamup.s3.client import RemotePart
from streamup.stream.worker import StreamWorker

log = structlog.get_logger("streamup")
Acquire = Callable[[], Awaitable[bool]]


async def restore_forgotten(worker: StreamWorker, acquire: Acquire) -> bool:
    """True when the store had lost the stream and now holds it again, leased to this agent;
    False when the stream is not this agent's any more (the caller backs off as before)."""
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


async def rebuild_lost_sqlite(store: SqliteStore, workers: list[StreamWorker]) -> None:
    """The SQLite file was deleted under the running agent (nothing it writes would survive a
    restart): a new file, holding every stream the agent works on with the parts S3 holds as
    recorded, swapped in as one step; one log line."""
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
    await retrying(lambda: store.replace_lost(snapshot))
    log.warning(
        "checkpoint.store_rebuilt",
        path=str(store.db_path),
        streams=len(snapshot),
        parts=sum(len(parts) for _, parts in snapshot),
        detail="the SQLite file was deleted; a new one holds what this agent knows (completed"
        " files' records are in memory only until they are seen again)",
    )
