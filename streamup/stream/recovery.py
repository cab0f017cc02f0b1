"""Resuming a stream after a restart: reconcile the checkpoint with what S3 holds.

The checkpoint may lag S3 by one part (a crash after the upload, before its checkpoint) or lead
it (an upload id that S3 expired). Parts S3 has but the checkpoint lacks are adopted only when
their bytes still match the file; parts the checkpoint has but S3 lacks go up again.
"""

from __future__ import annotations

from streamup.checksums import etag_hex
from streamup.errors import NoSuchUpload
from streamup.models import PartRecord, Proof, Status, utc_now
from streamup.stream.finalize import already_completed
from streamup.stream.lifecycle import contiguous_prefix
from streamup.stream.worker import StreamWorker


async def reconcile(worker: StreamWorker) -> bool:
    """Bring the checkpoint in line with S3. True when the object turned out to be complete
    already (a crash between CompleteMultipartUpload and its checkpoint)."""
    record = worker.record
    upload_id = record.upload_id
    if upload_id is None or record.rebuild:
        return False  # a rebuild under way resumes from its own intent (stream.rebuild)
    storage = worker.ctx.storage
    try:
        remote = await worker.persist(
            lambda: storage.list_parts(record.key, upload_id), "list parts"
        )
    except NoSuchUpload:
        if record.status == Status.PENDING_COMPLETION:
            parts = contiguous_prefix(worker.parts)
            if parts and await already_completed(worker, parts):
                worker.log.info("stream.found_completed", key=record.key)
                await worker.set_status(Status.S3_COMPLETED, completed_at=utc_now())
                return True
        await worker.restart_upload("S3 no longer knows the upload id")
        return False
    stale = [n for n, p in worker.parts.items() if n not in remote or remote[n].etag != p.etag]
    if stale:
        await worker.forget_parts(stale)
    adopted = 0
    for number, part in sorted(remote.items()):
        if number in worker.parts:
            continue
        if await _adopt(worker, number, part.etag, part.size_bytes):
            adopted += 1
    worker.log.info(
        "stream.reconciled", parts=len(worker.parts), dropped=len(stale), adopted=adopted
    )
    return False


async def _adopt(worker: StreamWorker, number: int, etag: str, size_bytes: int) -> bool:
    """Take a part S3 holds into the checkpoint when its bytes are the file's bytes now."""
    assert worker.source is not None
    span = worker.schedule.span(number)
    if span.size_bytes != size_bytes:
        return False  # a short tail from an interrupted finalization: it is re-cut anyway
    async with worker.ctx.part_slots:  # a part in memory counts against the slots
        data = await worker.source.read_part(span, with_md5=True)
        digests = None if data is None else (data.md5.hex() if data.md5 else "", data.crc32c.hex())
        del data
    # The part's ETag is the MD5 of what the server holds: adopted only when that is the file.
    if digests is None or etag_hex(etag) != digests[0]:
        return False
    md5_hex, crc32c_hex = digests
    await worker.keep_part(
        PartRecord(
            number,
            span.offset_bytes,
            size_bytes,
            etag,
            md5_hex,
            utc_now(),
            crc32c_hex=crc32c_hex,
            copied=worker.is_copy(number),
            proof=Proof.ETAG_COMPARED,
        )
    )
    return True
