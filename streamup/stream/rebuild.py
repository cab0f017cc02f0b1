"""A faststart MP4 by server-side copy: the shifted content is copied, not sent again.

When the file, at its end, starts `ftyp`, `moov` (files.container.faststart_shift) and the parts
sent while it grew are found again further on by their CRC32C, the final object is built from
them (s3.rebuild_plan) instead of sending every byte a second time:

1. intent: the plan goes into the checkpoint (`StreamRecord.rebuild`) before anything is done;
2. the stale upload is completed as it is: a temporary object at the stream's key (an upload
   cannot move to another key), recognised after a crash by its digests;
3. the stream switches to a fresh upload; the stale parts live on in the intent only;
4. piece by piece, in part order: the head (with the new `moov`), any changed part and the tail
   sent from the file, the shifted ranges copied from the temporary object (UploadPartCopy), each
   proven against the file's bytes for its range (the copy's CRC32C, or its ETag = their MD5)
   and checkpointed like a sent part;
5. the final upload is completed over the temporary object, and over it only (its ETag).

A crash anywhere resumes from the intent. A server that refuses UploadPartCopy gets the pieces
sent instead (logged once per agent); one that refuses to complete the stale upload, the usual
resend of the changed parts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Literal

import structlog

from streamup.checksums import etag_hex, multipart_etag
from streamup.errors import NoSuchUpload, StorageError
from streamup.faults import crash_point
from streamup.files.container import HEAD_BYTES, faststart_shift
from streamup.models import PartRecord, utc_now
from streamup.s3.integrity import object_mismatch
from streamup.s3.parts import PartSpan
from streamup.s3.rebuild_plan import Piece, Rebuild, Shifted, StalePart, plan_pieces
from streamup.stream.copying import copies_refused
from streamup.stream.ending import end_confirmed
from streamup.stream.worker import StreamWorker

log = structlog.get_logger("streamup")
HASH_BLOCK_BYTES = 8 * 1024 * 1024

Rebuilt = tuple[
    list[PartRecord], str, str
]  # the final parts, the file's SHA-256, the ETag replaced


async def rebuild(worker: StreamWorker) -> Rebuilt | Literal[False] | None:
    """Build the final object of a shifted file from its stale upload. None: this file is not
    one (or the stale upload could not be completed): verify and resend as before. False: the
    file changed under the rebuild; the stream goes back to growing, sent afresh."""
    if not worker.record.rebuild:
        plan = await _plan(worker)
        if plan is None:
            return None
        if not await end_confirmed(worker):  # nothing is done before the end stands
            return False
        worker.log.info(
            "stream.rebuild_planned", shift_bytes=plan.shift_bytes, copy_bytes=plan.copied_bytes
        )
        await _save(worker, plan)
    plan = Rebuild.from_json(worker.record.rebuild)
    if not plan.stale_completed:
        # Nothing is done yet: a file that changed since the plan (a restart found it grown)
        # is verified and resent as before, and the stale upload stays the stream's upload.
        done = await _complete_stale(worker, plan) if _as_planned(worker, plan) else None
        if done is None:
            await _save(worker, None)
            return None
        plan = done
    for piece in plan.pieces:
        if piece.number not in worker.parts:
            await _make(worker, piece)
    if not _as_planned(worker, plan):
        await _abandon(worker, plan, "the file changed while its object was rebuilt")
        return False
    sha256_hex = await _sha256(worker, plan.file_size_bytes)
    return [worker.parts[p.number] for p in plan.pieces], sha256_hex, plan.stale_etag


def _as_planned(worker: StreamWorker, plan: Rebuild) -> bool:
    assert worker.source is not None
    state = worker.source.fstat()
    return (state.size_bytes, state.mtime_ns) == (plan.file_size_bytes, plan.file_mtime_ns)


async def _save(worker: StreamWorker, plan: Rebuild | None) -> None:
    worker.record = worker.record.evolve(rebuild="" if plan is None else plan.to_json())
    record = worker.record
    await worker.persist(lambda: worker.ctx.store.save_stream(record), "checkpoint")


# -- the decision's inputs ---------------------------------------------------------------------


async def _plan(worker: StreamWorker) -> Rebuild | None:
    source, upload_id = worker.source, worker.record.upload_id
    if copies_refused() or source is None or upload_id is None or not worker.parts:
        return None
    state = source.fstat()
    head = await source.read_part(PartSpan(1, 0, min(HEAD_BYTES, state.size_bytes)), with_md5=False)
    shift = faststart_shift(head.body) if head is not None else None
    if shift is None:
        return None
    moved_from, shift_bytes = shift
    stale = [worker.parts[n] for n in sorted(worker.parts)]
    found: list[Shifted] = []
    source_offset = 0
    for part in stale:
        if part.offset_bytes >= moved_from and part.crc32c_hex:
            if await _found_at(worker, part, part.offset_bytes + shift_bytes):
                found.append(
                    Shifted(part.offset_bytes + shift_bytes, part.size_bytes, source_offset)
                )
            elif not found:
                return None  # the first old part is not where a shift puts it: no faststart
        source_offset += part.size_bytes
    pieces = plan_pieces(found, state.size_bytes, worker.record.part_size_bytes)
    if pieces is None:
        return None
    md5s = [p.md5_hex for p in stale]
    return Rebuild(
        stale_upload_id=upload_id,
        stale_parts=tuple(
            StalePart(p.number, p.etag, p.crc32c_hex, p.md5_hex, p.size_bytes) for p in stale
        ),
        stale_etag=multipart_etag(bytes.fromhex(m) for m in md5s) if all(md5s) else "",
        shift_bytes=shift_bytes,
        pieces=pieces,
        file_size_bytes=state.size_bytes,
        file_mtime_ns=state.mtime_ns,
    )


async def _found_at(worker: StreamWorker, part: PartRecord, offset: int) -> bool:
    assert worker.source is not None
    async with worker.ctx.part_slots:
        data = await worker.source.read_part(
            PartSpan(part.number, offset, part.size_bytes), with_md5=False
        )
        return data is not None and data.crc32c.hex() == part.crc32c_hex


# -- the stale upload, completed as the temporary object ----------------------------------------


def _stale_records(plan: Rebuild) -> list[PartRecord]:
    now = utc_now()
    return [
        PartRecord(p.number, 0, p.size_bytes, p.etag, p.md5_hex, now, crc32c_hex=p.crc32c_hex)
        for p in plan.stale_parts
    ]


async def _complete_stale(worker: StreamWorker, plan: Rebuild) -> Rebuild | None:
    """Complete the stale upload (or find it completed by us before a crash), then switch the
    stream to a fresh upload. None: the server would not complete it (nothing was changed)."""
    storage, key = worker.ctx.storage, worker.record.key
    with_crc = bool(worker.record.checksum_algorithm)
    etags = [
        (p.number, p.etag, bytes.fromhex(p.crc32c_hex) if with_crc else None)
        for p in plan.stale_parts
    ]
    crash_point("before_stale_complete")
    await worker.check_lease()
    try:
        await worker.persist(
            lambda: storage.complete_upload(key, plan.stale_upload_id, etags), "complete stale"
        )
        crash_point("after_stale_complete")
    except (NoSuchUpload, StorageError) as exc:
        if not isinstance(exc, NoSuchUpload) and exc.code != "PreconditionFailed":
            worker.log.warning("stream.rebuild_refused", step="complete stale", error=str(exc))
            return None
    remote = await worker.persist(lambda: storage.head_object(key), "head object")
    if remote is None or object_mismatch(remote, _stale_records(plan)) is not None:
        worker.log.warning("stream.rebuild_refused", step="complete stale", error="not ours")
        return None
    done = dataclasses.replace(plan, stale_etag=remote.etag, stale_completed=True)
    await worker.forget_parts(list(worker.parts))
    worker.record = worker.record.evolve(upload_id=None, rebuild=done.to_json())
    record = worker.record
    await worker.persist(lambda: worker.ctx.store.save_stream(record), "checkpoint")
    return done


# -- the pieces --------------------------------------------------------------------------------


async def _make(worker: StreamWorker, piece: Piece) -> None:
    """Send the piece, or copy it from the temporary object where it has a source there (a
    copy that the server refuses or that cannot be proven is sent: stream.copying)."""
    assert worker.source is not None
    span = PartSpan(piece.number, piece.offset_bytes, piece.size_bytes)
    async with worker.ctx.part_slots:
        # The MD5 as well: a copy's ETag is compared with it where the ETag is the MD5.
        copy = piece.source_offset is not None and not copies_refused()
        data = await worker.source.read_part(span, with_md5=copy or worker.with_md5)
        if data is None:
            return  # the file shrank: the size check after the pieces abandons the rebuild
        await worker.send(data, copy_from=piece.source_offset if copy else None)


# -- the end -----------------------------------------------------------------------------------


async def _sha256(worker: StreamWorker, size_bytes: int) -> str:
    assert worker.source is not None
    digest = hashlib.sha256()
    for offset in range(0, size_bytes, HASH_BLOCK_BYTES):
        span = PartSpan(1, offset, min(HASH_BLOCK_BYTES, size_bytes - offset))
        data = await worker.source.read_part(span, with_md5=False)
        assert data is not None, "the size was checked just before"
        await asyncio.to_thread(digest.update, data.body)
    return digest.hexdigest()


async def _abandon(worker: StreamWorker, plan: Rebuild, reason: str) -> None:
    """The file changed: the temporary object goes (it is ours: its ETag), the fresh upload too,
    and the stream starts over with a new upload."""
    storage, key = worker.ctx.storage, worker.record.key
    worker.log.warning("stream.rebuild_abandoned", reason=reason)
    remote = await worker.persist(lambda: storage.head_object(key), "head object")
    if remote is not None and etag_hex(remote.etag) == etag_hex(plan.stale_etag):
        await worker.persist(lambda: storage.delete_object(key), "delete temporary object")
    upload_id = worker.record.upload_id
    if upload_id is not None:
        await worker.persist(lambda: storage.abort_upload(key, upload_id), "abort")
    await worker.restart_upload(reason)
    await _save(worker, None)


async def when_lost(worker: StreamWorker) -> str | None:
    """The file vanished (while the agent was down) during a rebuild. Every piece in the fresh
    upload: its object is the final file after all; the ETag of the temporary object it
    replaces. Otherwise the temporary object and the fresh upload go (the stale parts lack the
    file's first part: no use as a partial object) and nothing is left to complete."""
    if not worker.record.rebuild:
        return None
    plan = Rebuild.from_json(worker.record.rebuild)
    if not plan.stale_completed:
        await _save(worker, None)  # the stale upload is the stream's upload still
        return None
    if all(p.number in worker.parts for p in plan.pieces):
        return plan.stale_etag
    await _abandon(worker, plan, "the file vanished before its object was rebuilt")
    return None
