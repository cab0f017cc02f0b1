"""The end of a stream: verify every part against the file, send the tail, complete, describe.

Recorders rewrite what they wrote (the MP4 muxer patches its `mdat` header on exit; faststart
moves `moov` to the front), so before completing, every part is re-read and compared with the
checksum of what was sent; a part that changed goes up again under the same number. The object
then equals the file as it is now, byte for byte, and the SHA-256 of the whole comes for free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

from streamup import metrics
from streamup.after.events import stream_event
from streamup.after.metadata import (
    build_metadata,
    content_type_for,
    encode_metadata,
    metadata_key,
)
from streamup.checksums import multipart_etag
from streamup.errors import NoSuchUpload, SourceChanged, StorageError
from streamup.faults import crash_point
from streamup.files.probe import ProbeResult, probe_media
from streamup.files.source import stat_path
from streamup.models import (
    CompletedRecord,
    EndReason,
    FileState,
    PartRecord,
    Proof,
    Status,
    utc_now,
)
from streamup.s3.integrity import composite_crc32c, object_mismatch, part_proof, weakest
from streamup.s3.placement import ensure_tags
from streamup.stream.check import EndCheck
from streamup.stream.ending import end_confirmed
from streamup.stream.lifecycle import check_transition, contiguous_prefix, end_reason
from streamup.stream.rebuild import rebuild
from streamup.stream.rebuild import when_lost as rebuild_when_lost
from streamup.stream.worker import StreamWorker


async def finalize(worker: StreamWorker) -> bool:
    """Verify, complete and describe the stream. False: it must go back to growing."""
    assert worker.source is not None
    await worker.set_status(Status.PENDING_COMPLETION)
    rebuilt = await rebuild(worker)  # a faststart MP4: its shifted content copied, not resent
    if rebuilt is None:
        checked = await _checked(worker)
        if checked is None:
            return False
        parts, sha256_hex, reuploaded = checked
        replacing = None
    elif rebuilt is False:
        await worker.set_status(Status.ACTIVE)
        return False
    else:
        (parts, sha256_hex, replacing), reuploaded = rebuilt, 0
    if not await end_confirmed(worker):  # the check ran while the writer's close was confirmed
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
    # ffprobe reads the verified file while the server builds the object (for moto, seconds
    # that grow with the object): the metadata is ready to go up when the object is.
    probing = asyncio.ensure_future(probe_source(worker))
    try:
        if not await complete(worker, parts, replacing=replacing):
            return False
        await write_metadata(worker, probing)
    finally:
        probing.cancel()  # ffprobe is killed if the stream went back to growing
    return True


async def _checked(worker: StreamWorker) -> tuple[list[PartRecord], str, int] | None:
    """The end-of-stream check (stream.check); None: the stream goes back to growing."""
    try:
        return await EndCheck(worker).run()
    except SourceChanged as exc:
        worker.log.info("stream.changed_during_verification", detail=str(exc))
        if worker.unconfirmed_end is not None:  # started on a close its writer took back
            worker.check_early = False
    except NoSuchUpload as exc:
        await worker.restart_upload(str(exc))
    await worker.set_status(Status.ACTIVE)
    return None


async def complete(
    worker: StreamWorker, parts: list[PartRecord], *, replacing: str | None = None
) -> bool:
    """CompleteMultipartUpload, once, then prove the object is the completion of the parts.
    A crash mid-way is recognised by the object's digests (`already_completed`). `replacing`:
    the ETag of the one object at the key the completion may replace: the stream's own temporary
    object (stream.rebuild), or the object an extension was built from (stream.extension)."""
    storage = worker.ctx.storage
    key, upload_id = worker.record.key, worker.record.upload_id
    assert upload_id is not None
    with_crc = bool(worker.record.checksum_algorithm)
    etags = [(p.number, p.etag, bytes.fromhex(p.crc32c_hex) if with_crc else None) for p in parts]
    # An extension replaces the object it was built from, and only that one (stream.extension).
    extends = worker.record.extends
    if replacing is None and extends is not None:
        replacing = extends.etag
    crash_point("before_complete" if extends is None else "before_replace")
    await worker.check_lease()
    started = worker.ctx.clock()
    try:
        await worker.persist(
            lambda: storage.complete_upload(key, upload_id, etags, replacing=replacing),
            "complete",
        )
        worker.complete_s = worker.ctx.clock() - started  # the server's assembly, as seen here
        crash_point("after_complete" if extends is None else "after_replace")
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
    else:
        if not await _object_is_parts(worker, parts):
            return False
    await worker.set_status(Status.S3_COMPLETED, completed_at=utc_now(), error=None)
    return True


async def _object_is_parts(worker: StreamWorker, parts: list[PartRecord]) -> bool:
    """After completing: does the object the server built agree with the parts (size, CRC32C,
    ETag, as far as the server reports them)? If not, it is not ours to certify: it is deleted
    and the stream starts again."""
    key = worker.record.key
    remote = await worker.persist(lambda: worker.ctx.storage.head_object(key), "head object")
    reason = "the object is missing right after its completion" if remote is None else None
    reason = reason or (None if remote is None else object_mismatch(remote, parts))
    if reason is None:
        return True
    worker.log.error("stream.object_mismatch", key=key, reason=reason)
    await worker.persist(lambda: worker.ctx.storage.delete_object(key), "delete object")
    crash_point("after_mismatch_delete")
    await worker.restart_upload(f"the completed object did not match: {reason}")
    await worker.set_status(Status.ACTIVE)
    return False


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
    remote = await worker.persist(lambda: worker.ctx.storage.head_object(key), "head object")
    if remote is None:
        return False
    # Recognisable by its multipart ETag (every part's MD5 known) or its CRC32C.
    by_etag = all(p.md5_hex for p in parts)
    by_crc = remote.crc32c is not None and composite_crc32c(parts) is not None
    return (by_etag or by_crc) and object_mismatch(remote, parts) is None


async def finish_lost(worker: StreamWorker) -> None:
    """The file vanished while the agent was down: keep what S3 holds, flagged partial."""
    replacing = await rebuild_when_lost(worker)
    parts = contiguous_prefix(worker.parts)
    worker.log.warning("stream.file_lost", parts=len(parts))
    await worker.set_status(Status.PENDING_COMPLETION, end_reason=EndReason.FILE_LOST)
    extends = worker.record.extends
    if extends is not None and sum(p.size_bytes for p in parts) <= extends.size_bytes:
        parts = []  # it would replace the object with no more than it holds: that one stays
    if not parts or worker.record.upload_id is None:
        if worker.record.upload_id is not None:
            key, upload_id = worker.record.key, worker.record.upload_id
            await worker.persist(lambda: worker.ctx.storage.abort_upload(key, upload_id), "abort")
        await finish(worker, Status.ABORTED_NO_PARTS)
        return
    await worker.forget_parts([n for n in worker.parts if n > len(parts)])
    worker.record = worker.record.evolve(
        size_bytes=sum(p.size_bytes for p in parts), sha256_hex=None
    )
    if await complete(worker, parts, replacing=replacing):
        await write_metadata(worker)
    elif worker.record.upload_id is None:
        # The upload vanished as well (aborted, expired): nothing is left anywhere to keep.
        await finish(worker, Status.ABORTED_NO_PARTS)


async def write_metadata(
    worker: StreamWorker, probing: asyncio.Future[ProbeResult] | None = None
) -> None:
    """Probe, build and upload the metadata JSON; the stream is `completed` only after that.

    ffprobe never fails a stream (a bad probe gives `duration_seconds: null`), and a failure here
    leaves a status that is retried without completing the multipart upload a second time.
    `probing`: the probe of the verified file, already under way.
    """
    crash_point("before_metadata")
    probe = await (probing if probing is not None else probe_source(worker))
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
            proof=object_proof(worker, parts).value,
        )
    except (ValueError, TypeError) as exc:
        await worker.set_status(Status.FAILED_METADATA_GENERATION, error=str(exc))
        metrics.FAILURES.labels(status=Status.FAILED_METADATA_GENERATION.value).inc()
        worker.log.error("stream.failed", status="failed_metadata_generation", error=str(exc))
        return
    body, key = encode_metadata(doc), metadata_key(worker.record.key)
    # An extension's object replaced the one this document described: it is rewritten.
    extended = worker.record.extends
    storage, options = worker.ctx.storage, worker.ctx.object_options
    await worker.check_lease()
    try:
        await _keep_tags(worker, worker.record.key)
        try:
            await worker.persist(
                lambda: storage.put_bytes(
                    key, body, "application/json", exclusive=extended is None, options=options
                ),
                "metadata",
            )
        except StorageError as exc:
            if exc.code != "PreconditionFailed":
                raise
            # Written already (a retry after a crash, or a previous owner): never overwritten,
            # and the event carries the document S3 holds, not the one rebuilt just now.
            worker.log.info("stream.metadata_exists", key=key)
            stored = await worker.persist(lambda: storage.get_bytes(key), "read metadata")
            doc = _parsed(stored) or doc
        await _keep_tags(worker, key)
    except StorageError as exc:
        await worker.set_status(Status.FAILED_METADATA_UPLOAD, error=str(exc))
        metrics.FAILURES.labels(status=Status.FAILED_METADATA_UPLOAD.value).inc()
        worker.log.error("stream.failed", status="failed_metadata_upload", error=str(exc))
        return
    await _completed(worker, doc)


def _parsed(body: bytes | None) -> dict[str, object] | None:
    try:
        doc = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


async def _keep_tags(worker: StreamWorker, key: str) -> None:
    """S3_OBJECT_TAGS went with CreateMultipartUpload / PutObject; a server that dropped them
    (Ceph RGW drops those given at CreateMultipartUpload) gets them by PutObjectTagging."""
    wanted, storage = worker.ctx.object_options.tags, worker.ctx.storage
    if await worker.persist(lambda: ensure_tags(storage, key, wanted), "tags"):
        worker.log.info("object.tags_applied", key=key)


async def _completed(worker: StreamWorker, doc: dict[str, object]) -> None:
    await finish(worker, Status.COMPLETED, doc)
    metrics.COMPLETIONS.inc()
    worker.log.info(
        "stream.completed",
        key=worker.record.key,
        size_bytes=worker.record.size_bytes,
        duration_s=doc.get("duration_seconds"),
        end_reason=worker.record.end_reason.value,
        server_complete_s=None if worker.complete_s is None else round(worker.complete_s, 3),
    )


def object_proof(worker: StreamWorker, parts: list[PartRecord]) -> Proof:
    """How the object is proven: as well as its least proven part (the object itself was
    checked against the parts right after completion, `_object_is_parts`)."""
    caps, with_checksum = worker.ctx.integrity, bool(worker.record.checksum_algorithm)
    if worker.record.end_reason is EndReason.FILE_LOST:
        return Proof.UNVERIFIED  # nothing could compare it with the file
    return weakest(part_proof(p, caps, with_checksum=with_checksum) for p in parts)


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


async def finish(
    worker: StreamWorker, status: Status, metadata: dict[str, object] | None = None
) -> None:
    """Mark the stream `status` (completed, aborted_no_parts): the working state is replaced by
    the compact completed record and the stream's event enters the outbox, in one atomic step.
    A crash before it resumes the stream; after it, the event is delivered from the outbox."""
    check_transition(worker.record.status, status)
    error = None if status is Status.COMPLETED else worker.record.error
    worker.record = worker.record.evolve(status=status, last_activity_at=utc_now(), error=error)
    record = worker.record
    # The proof fields read the status just set on worker.record.
    completed = _with_proof(
        worker,
        CompletedRecord(
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
            extensions=0 if record.extends is None else record.extends.count,
        ),
    )
    event = stream_event(record, metadata, host=worker.ctx.agent_host, created_at=utc_now())
    crash_point("before_finish")
    await worker.persist(
        lambda: worker.ctx.store.finish_stream(record, completed, event), "checkpoint"
    )
    worker.completed_record = completed


def _with_proof(worker: StreamWorker, completed: CompletedRecord) -> CompletedRecord:
    """What the local-file action checks later (after.lifecycle), kept in the completed record
    because the parts leave the checkpoint now: the digests the object must show, its proof, the
    file's ctime, the finishing host."""
    record, source = worker.record, worker.source
    parts = [worker.parts[n] for n in sorted(worker.parts)]
    if record.status is not Status.COMPLETED or not parts:
        return dataclasses.replace(completed, host=worker.ctx.agent_host)
    etag = ""
    if all(p.md5_hex for p in parts):
        etag = multipart_etag(bytes.fromhex(p.md5_hex) for p in parts)
    verified = FileState(record.identity, record.size_bytes, record.mtime_ns)
    ctime_ns = source.ctime_ns() if source is not None and source.fstat() == verified else 0
    return dataclasses.replace(
        completed,
        ctime_ns=ctime_ns,
        sha256_hex=record.sha256_hex or "",
        object_etag=etag,
        object_crc32c=composite_crc32c(parts) or "",
        proof=object_proof(worker, parts).value,
        host=worker.ctx.agent_host,
    )
