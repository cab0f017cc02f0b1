"""The end of a stream: verify every part against the file, send the tail, complete, describe.

Recorders rewrite what they wrote (the MP4 muxer patches its `mdat` header on exit; faststart
moves `moov` to the front), so before completing, every part is re-read and compared with the
checksum of what was sent; a part that changed goes up again under the same number. The object
then equals the file as it is now, byte for byte, and the SHA-256 of the whole comes for free.
"""

from __future__ import annotations

import asyncio
import hashlib

from streamup import metrics
from streamup.after.metadata import build_metadata, content_type_for, encode_metadata
from streamup.errors import NoSuchUpload, SourceChanged, StorageError
from streamup.faults import crash_point
from streamup.files.probe import ProbeResult, probe_media
from streamup.files.source import PartData, hash_part, stat_path
from streamup.models import CompletedRecord, EndReason, PartRecord, Status, utc_now
from streamup.s3.parts import PartSpan, final_layout
from streamup.stream.lifecycle import contiguous_prefix, end_reason, multipart_etag
from streamup.stream.worker import StreamWorker


async def finalize(worker: StreamWorker) -> bool:
    """Verify, complete and describe the stream. False: it must go back to growing."""
    assert worker.source is not None
    await worker.set_status(Status.PENDING_COMPLETION)
    try:
        parts, sha256_hex, reuploaded = await verify_and_send(worker)
    except SourceChanged as exc:
        worker.log.info("stream.changed_during_verification", detail=str(exc))
        await worker.set_status(Status.ACTIVE)
        return False
    except NoSuchUpload as exc:
        await worker.restart_upload(str(exc))
        await worker.set_status(Status.ACTIVE)
        return False
    state = worker.source.fstat()
    reason = end_reason(worker.record.identity, stat_path(worker.record.path))
    worker.record = worker.record.evolve(
        sha256_hex=sha256_hex,
        size_bytes=state.size_bytes,
        mtime_ns=state.mtime_ns,
        reuploaded_parts=worker.record.reuploaded_parts + reuploaded,
        end_reason=reason,
    )
    record = worker.record
    # The SHA-256 is checkpointed before completing: a crash after completion still has it.
    await worker.persist(lambda: worker.ctx.store.save_stream(record), "checkpoint")
    worker.log.info(
        "stream.verified", size_bytes=state.size_bytes, parts=len(parts), reuploaded=reuploaded
    )
    if not await complete(worker, parts):
        return False
    await write_metadata(worker)
    return True


async def verify_and_send(worker: StreamWorker) -> tuple[list[PartRecord], str, int]:
    """Read the file once, in order; re-send changed parts and the tail. Memory: the window."""
    source = worker.source
    assert source is not None
    before = source.fstat()
    layout = final_layout(worker.schedule, before.size_bytes) or [PartSpan(1, 0, 0)]
    await worker.drop_parts_past_end(before.size_bytes)
    whole = hashlib.sha256()
    reuploaded = 0
    slots = worker.ctx.part_slots
    pending: set[asyncio.Future[PartRecord]] = set()
    try:
        for span in layout:
            data = await _read_holding_slot(worker, span, whole)
            known = worker.parts.get(span.number)
            same_range = known is not None and known.size_bytes == span.size_bytes
            if same_range and known is not None and known.md5_hex == data.md5_digest.hex():
                # Drop the bytes before waiting for the next slot: a buffer held across that
                # wait is a part in memory outside the slots (100 streams: 100 parts).
                del data
                slots.release()
                continue
            if same_range:
                reuploaded += 1  # same range, other bytes: the writer went back and changed it
                metrics.PARTS_REUPLOADED.inc()
            task = asyncio.create_task(worker.send(data))
            del data  # the task holds it now, and releases the slot when done
            task.add_done_callback(lambda _t: slots.release())
            pending.add(task)
            if len(pending) >= worker.ctx.window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()
        for finished in asyncio.as_completed(list(pending)):
            await finished
        pending = set()
    finally:
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if source.fstat() != before:
        raise SourceChanged("the file changed while it was verified")
    return [worker.parts[s.number] for s in layout], whole.hexdigest(), reuploaded


async def _read_holding_slot(
    worker: StreamWorker, span: PartSpan, whole: hashlib._Hash
) -> PartData:
    """Take a part slot, then read and hash the part; the caller releases the slot.

    The slot is taken before the bytes are read: however many streams verify at once, no more
    than UPLOAD_CONCURRENCY parts are in memory.
    """
    assert worker.source is not None
    await worker.ctx.part_slots.acquire()
    try:
        data = await hash_part(worker.source, span, whole)
    except BaseException:
        worker.ctx.part_slots.release()
        raise
    if data is None:
        worker.ctx.part_slots.release()
        raise SourceChanged(f"the file shrank while part {span.number} was read")
    return data


async def complete(worker: StreamWorker, parts: list[PartRecord]) -> bool:
    """CompleteMultipartUpload, once. A crash mid-way is recognised by the object's ETag."""
    storage = worker.ctx.storage
    key, upload_id = worker.record.key, worker.record.upload_id
    assert upload_id is not None
    etags = [(p.number, p.etag) for p in parts]
    crash_point("before_complete")
    await worker.check_lease()
    try:
        await worker.persist(lambda: storage.complete_upload(key, upload_id, etags), "complete")
        crash_point("after_complete")
    except NoSuchUpload:
        if not await already_completed(worker, parts):
            await worker.restart_upload("the upload vanished before it was completed")
            await worker.set_status(Status.ACTIVE)
            return False
    except StorageError as exc:
        if exc.code == "PreconditionFailed" and await already_completed(worker, parts):
            # Completed already (by us before a crash, or by an agent that took over): the
            # object is exactly these parts, so the stream goes on to its metadata.
            await worker.persist(lambda: storage.abort_upload(key, upload_id), "abort")
            await worker.set_status(Status.S3_COMPLETED, completed_at=utc_now(), error=None)
            return True
        if exc.code == "InvalidPart" and await _restarted_for_parts_left(worker, parts):
            return False
        await worker.set_status(Status.FAILED_S3_COMPLETE, error=str(exc))
        await worker.pause_after(exc)
        return False
    await worker.set_status(Status.S3_COMPLETED, completed_at=utc_now(), error=None)
    return True


async def _restarted_for_parts_left(worker: StreamWorker, parts: list[PartRecord]) -> bool:
    """Ceph RGW completes an upload only with every part it holds (InvalidPart otherwise), and
    S3 cannot drop a part: parts left past the end of a file that shrank mean a fresh upload,
    sent again from the file. True when the stream went back to uploading for that reason."""
    if worker.source is None:
        return False  # the file is gone: what S3 holds is all there is, never thrown away
    storage, key, upload_id = worker.ctx.storage, worker.record.key, worker.record.upload_id
    assert upload_id is not None
    held = await worker.persist(lambda: storage.list_parts(key, upload_id), "list parts")
    left = sorted(held.keys() - {p.number for p in parts})
    if not left:
        return False
    await worker.persist(lambda: storage.abort_upload(key, upload_id), "abort")
    await worker.restart_upload(f"the server completes only every part; parts {left} are stale")
    await worker.set_status(Status.ACTIVE)
    return True


async def already_completed(worker: StreamWorker, parts: list[PartRecord]) -> bool:
    """True when the object exists and is exactly the completion of these parts."""
    key = worker.record.key
    head = await worker.persist(lambda: worker.ctx.storage.head_object(key), "head object")
    if head is None:
        return False
    expected = multipart_etag(bytes.fromhex(p.md5_hex) for p in parts)
    size = sum(p.size_bytes for p in parts)
    return head == (size, expected)


async def finish_lost(worker: StreamWorker) -> None:
    """The file vanished while the agent was down: keep what S3 holds, flagged partial."""
    parts = contiguous_prefix(worker.parts)
    worker.log.warning("stream.file_lost", parts=len(parts))
    await worker.set_status(Status.PENDING_COMPLETION, end_reason=EndReason.FILE_LOST)
    if not parts or worker.record.upload_id is None:
        if worker.record.upload_id is not None:
            key, upload_id = worker.record.key, worker.record.upload_id
            await worker.persist(lambda: worker.ctx.storage.abort_upload(key, upload_id), "abort")
        await worker.set_status(Status.ABORTED_NO_PARTS)
        await finish(worker)
        return
    await worker.forget_parts([n for n in worker.parts if n > len(parts)])
    worker.record = worker.record.evolve(
        size_bytes=sum(p.size_bytes for p in parts), sha256_hex=None
    )
    if await complete(worker, parts):
        await write_metadata(worker)
    elif worker.record.upload_id is None:
        # The upload vanished as well (aborted, expired): nothing is left anywhere to keep.
        await worker.set_status(Status.ABORTED_NO_PARTS)
        await finish(worker)


async def write_metadata(worker: StreamWorker) -> None:
    """Probe, build and upload the metadata JSON; the stream is `completed` only after that.

    ffprobe never fails a stream (a bad probe gives `duration_seconds: null`), and a failure here
    leaves a status that is retried without completing the multipart upload a second time.
    """
    crash_point("before_metadata")
    probe = await probe_source(worker)
    if probe.error:
        worker.log.warning("stream.probe_failed", error=probe.error)
    parts = [worker.parts[n] for n in sorted(worker.parts)]
    try:
        doc = build_metadata(
            worker.record,
            parts,
            probe,
            processed_at=utc_now(),
            content_type=content_type_for(worker.record.path),
        )
    except (ValueError, TypeError) as exc:
        await worker.set_status(Status.FAILED_METADATA_GENERATION, error=str(exc))
        metrics.FAILURES.labels(status=Status.FAILED_METADATA_GENERATION.value).inc()
        worker.log.error("stream.failed", status="failed_metadata_generation", error=str(exc))
        return
    body, key = encode_metadata(doc), f"{worker.record.key}.metadata.json"
    storage = worker.ctx.storage
    await worker.check_lease()
    try:
        await worker.persist(
            lambda: storage.put_bytes(key, body, "application/json", exclusive=True), "metadata"
        )
    except StorageError as exc:
        if exc.code == "PreconditionFailed":
            # Written already (a retry after a crash, or a previous owner): never overwritten.
            worker.log.info("stream.metadata_exists", key=key)
            await _completed(worker, doc)
            return
        await worker.set_status(Status.FAILED_METADATA_UPLOAD, error=str(exc))
        metrics.FAILURES.labels(status=Status.FAILED_METADATA_UPLOAD.value).inc()
        worker.log.error("stream.failed", status="failed_metadata_upload", error=str(exc))
        return
    await _completed(worker, doc)


async def _completed(worker: StreamWorker, doc: dict[str, object]) -> None:
    await worker.set_status(Status.COMPLETED, error=None)
    await finish(worker)
    metrics.COMPLETIONS.inc()
    worker.log.info(
        "stream.completed",
        key=worker.record.key,
        size_bytes=worker.record.size_bytes,
        duration_s=doc.get("duration_seconds"),
        end_reason=worker.record.end_reason.value,
    )


async def probe_source(worker: StreamWorker) -> ProbeResult:
    source = worker.source
    if source is None:
        return ProbeResult(error="the file is gone")
    # Through /proc the probe reads our descriptor: the very bytes uploaded, even if the path
    # now names another file or nothing.
    return await probe_media(
        source.proc_path,
        ffprobe_path=worker.ctx.ffprobe_path,
        timeout_s=worker.ctx.ffprobe_timeout_s,
    )


async def finish(worker: StreamWorker) -> None:
    """Replace the working state with the compact completed record, in one atomic step."""
    record = worker.record
    completed = CompletedRecord(
        stream_id=record.stream_id,
        path=record.path,
        bucket=record.bucket,
        key=record.key,
        status=record.status,
        identity=record.identity,
        size_bytes=record.size_bytes,
        mtime_ns=record.mtime_ns,
        completed_at=record.completed_at or utc_now(),
        end_reason=record.end_reason,
    )
    await worker.persist(lambda: worker.ctx.store.finish_stream(record, completed), "checkpoint")
    worker.completed_record = completed
