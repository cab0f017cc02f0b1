"""A finished file S3 already holds, though the checkpoint store has no record of it (STATE_DIR
lost, a Redis that lost everything while no agent ran, an agent reinstalled on the same folder):
recognised from the object's own metadata document and the file's bytes, recorded as completed,
and not uploaded again.

Only a file last changed before this agent started is looked at (a recording that is written
now cannot be in S3 yet, so a new recording costs no request), and only at the keys its template
gives: `a.mp4`, `a-2.mp4`, ... up to the first free one; with `{stream_id}` in the template (the
default), the keys that are the file's with some stream id, from one listing of the objects
under the part before it, made once per run. A template with `{started}` gives keys that
cannot be found again: nothing is recognised.

The proof, link by link: the metadata document names this path and size; its parts' ETags give
the multipart ETag HeadObject shows (and their CRC32Cs the COMPOSITE CRC32C, where the server
reports one), so the parts it lists are the object's; the file, read once, has each of those
parts' CRC32C, and did not change while it was read, so its bytes are the object's. A file
longer than its object that begins with it grew after the object was made: recorded as the
completed prefix it is, it is then extended like any completed file that grew
(stream.extension: the object copied in S3, only the new bytes sent). Anything
short of that (another path, another size, a part without a CRC32C, a partial object, a byte
changed) is a new recording at a new key, as before. The record keeps the proof, SHA-256 and
digests the document and HeadObject gave, so the local-file action checks the object as it
would for a stream it finished.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from streamup import metrics
from streamup.checksums import composite_crc32c, multipart_etag
from streamup.errors import StorageError
from streamup.files.budget import out_of_descriptors
from streamup.files.source import SourceFile
from streamup.models import CompletedRecord, EndReason, FileState, Status, parse_iso, utc_now
from streamup.retry import retrying
from streamup.s3.client import RemoteObject, S3Storage
from streamup.s3.keys import METADATA_SUFFIX, KeyFields, KeyTemplate

log = structlog.get_logger("streamup")
READS_AT_ONCE = 2  # files read to be recognised at once: a disk's worth, a few descriptors


@dataclass(frozen=True, slots=True)
class Span:
    offset_bytes: int
    size_bytes: int
    crc32c: bytes


@dataclass(frozen=True, slots=True)
class Described:
    """What a metadata document says of its object, checked against HeadObject."""

    stream_id: str
    size_bytes: int  # the object's: the file's, or the first bytes of a file that grew since
    spans: tuple[Span, ...]
    object_etag: str
    object_crc32c: str
    sha256_hex: str
    proof: str
    completed_at: datetime | None
    end_reason: EndReason
    extensions: int


def described(doc: object, remote: RemoteObject, path: str, size_bytes: int) -> Described | str:
    """The parts the file must match, or why the object is not this file's (pure)."""
    if not isinstance(doc, dict):
        return "no metadata document"
    if doc.get("original_file_path") != path:
        return "the object is another file's"
    if doc.get("partial") is True:
        return "the object is partial"
    total = doc.get("total_size_bytes")
    if not isinstance(total, int) or total != remote.size_bytes or total > size_bytes:
        return "the sizes differ"  # a longer file may begin with the object: it grew since
    spans = _spans(doc.get("chunks"), total)
    if isinstance(spans, str):
        return spans
    crcs = [span.crc32c for span in spans]
    crc = composite_crc32c(crcs) or ""
    if remote.crc32c is not None and remote.crc32c != crc:
        return "the object's CRC32C is not its parts'"
    etag = _multipart_etag(doc["chunks"])  # a list of parts: _spans read every one
    if etag is None or etag.strip('"') != remote.etag.strip('"'):
        return "the object's ETag is not its parts'"
    extended = doc.get("extended_from")
    extensions = extended.get("extensions") if isinstance(extended, dict) else 0
    try:
        completed_at = parse_iso(str(doc.get("stream_completed_at_utc")))
    except ValueError:
        completed_at = None
    try:
        end_reason = EndReason(str(doc.get("end_reason")))
    except ValueError:
        end_reason = EndReason.IDLE
    return Described(
        stream_id=str(doc.get("stream_id") or ""),
        size_bytes=total,
        spans=tuple(spans),
        object_etag=remote.etag,
        object_crc32c=crc,
        sha256_hex=str(doc.get("sha256") or ""),
        proof=str(doc.get("integrity_proof") or ""),
        completed_at=completed_at,
        end_reason=end_reason,
        extensions=extensions if isinstance(extensions, int) else 0,
    )


def _spans(chunks: object, size_bytes: int) -> list[Span] | str:
    if not isinstance(chunks, list) or not chunks:
        return "the metadata lists no parts"
    spans, offset = [], 0
    for number, chunk in enumerate(chunks, start=1):
        if not isinstance(chunk, dict) or chunk.get("part_number") != number:
            return "the metadata's parts are not in order"
        size, text = chunk.get("size_bytes"), chunk.get("checksum_crc32c")
        if not isinstance(text, str):
            return "a part has no CRC32C"  # uploaded before CRC32C was kept
        try:
            crc = base64.b64decode(text, validate=True)
        except binascii.Error:
            crc = b""
        if not isinstance(size, int) or size < 0 or len(crc) != 4:
            return "a part is unreadable"
        spans.append(Span(offset, size, crc))
        offset += size
    return spans if offset == size_bytes else "the parts do not add up to the object"


def _multipart_etag(chunks: list[dict[str, object]]) -> str | None:
    try:
        return multipart_etag(bytes.fromhex(str(c.get("etag")).strip('"')) for c in chunks)
    except ValueError:
        return None  # ETags that are not MD5s (SSE-KMS): nothing ties the parts to the object


class Recognition:
    """Looks for the objects of finished files the store has no record of; one per agent run
    (it keeps the listings it made: what this agent uploads after them has a record)."""

    def __init__(
        self, storage: S3Storage, template: KeyTemplate, *, host: str, started_ns: int
    ) -> None:
        self.storage = storage
        self.template = template
        self.host = host
        self.started_ns = started_ns  # files changed since cannot be in S3 yet
        self._listed: dict[str, list[str]] = {}
        self._lock = asyncio.Lock()
        self._reading = asyncio.Semaphore(READS_AT_ONCE)

    async def recognise(
        self, fields: KeyFields, path: str, state: FileState
    ) -> CompletedRecord | None:
        """The completed record of `path`, when an object at a key it would get holds its very
        bytes (then logged `stream.recognised`); None otherwise. Transient S3 errors are
        retried; a permanent one means "not recognised": the file goes up as a new recording."""
        if state.mtime_ns >= self.started_ns:
            return None
        try:
            keys, until_free = await self._candidates(fields)
        except ValueError:
            return None  # no valid key for the file: placing it says why
        for key in keys:
            try:
                there = await _object_and_document(self.storage, key)
            except StorageError as exc:
                log.warning("stream.not_recognised", path=path, key=key, reason=str(exc))
                return None
            if there is None:
                if until_free:
                    return None  # the first free key: the file was never uploaded further on
                continue
            remote, doc = there
            found = described(doc, remote, path, state.size_bytes)
            if isinstance(found, str):
                log.debug("stream.not_recognised", path=path, key=key, reason=found)
                continue
            async with self._reading:  # a few files read at once, each holding a descriptor
                record = await _if_the_file_is_it(
                    found, key, self.storage.bucket, path, state, self.host
                )
            if record is not None:
                metrics.FILES_RECOGNISED.inc()
                log.info("stream.recognised", path=path, key=key, stream_id=record.stream_id,
                         size_bytes=record.size_bytes, proof=record.proof)  # fmt: skip
                return record
        return None

    async def _candidates(self, fields: KeyFields) -> tuple[list[str], bool]:
        """The keys that may hold the file's object, and whether the first free one ends them
        (numbered keys; with {stream_id}: the listed keys that are the file's with some id)."""
        search = self.template.search(fields)
        if search is None:
            return [], False
        if search.numbered:
            return list(search.numbered), True
        return [k for k in await self._listing(search.prefix) if search.fits(k)], False

    async def _listing(self, prefix: str) -> list[str]:
        """The video keys under `prefix` that have a metadata document, listed once per run (a
        listing refused for good, `s3:ListBucket` missing say, is one warning and no keys)."""
        async with self._lock:
            if prefix not in self._listed:
                try:
                    found = await retrying(lambda: self.storage.list_keys(prefix, METADATA_SUFFIX))
                except StorageError as exc:
                    log.warning("stream.recognition_unavailable", prefix=prefix, error=str(exc),
                                hint="grant s3:ListBucket, or files S3 holds without a record"
                                " are uploaded again")  # fmt: skip
                    found = []
                self._listed[prefix] = sorted(k[: -len(METADATA_SUFFIX)] for k in found)
            return self._listed[prefix]


async def _object_and_document(storage: S3Storage, key: str) -> tuple[RemoteObject, object] | None:
    remote = await retrying(lambda: storage.head_object(key))
    if remote is None:
        return None
    body = await retrying(lambda: storage.get_bytes(key + METADATA_SUFFIX))
    try:
        return remote, None if body is None else json.loads(body)
    except ValueError:
        return remote, None  # not a document: described() says so


async def _if_the_file_is_it(
    found: Described, key: str, bucket: str, path: str, state: FileState, host: str
) -> CompletedRecord | None:
    try:
        source = SourceFile.reopen(path, state.identity, same_device=True)
    except OSError as exc:
        if out_of_descriptors(exc):
            raise  # deferred, not uploaded: the next scan looks again (stream.discovery)
        log.warning("stream.not_recognised", path=path, key=key, reason=exc.strerror)
        return None
    if source is None:
        return None
    try:
        before, ctime_ns = source.fstat(), source.ctime_ns()
        if before != state:
            return None
        if not await _same_bytes(source, found.spans):
            log.info("stream.not_recognised", path=path, key=key,
                     reason="the file's bytes are not the object's")  # fmt: skip
            return None
        if source.fstat() != before or source.ctime_ns() != ctime_ns:
            return None  # changed while read: looked at again as the changed file it is
    finally:
        source.close()
    whole = found.size_bytes == state.size_bytes  # else the file grew after its object was made
    return CompletedRecord(
        stream_id=found.stream_id,
        path=path,
        bucket=bucket,
        key=key,
        status=Status.COMPLETED,
        identity=state.identity,
        size_bytes=found.size_bytes,
        mtime_ns=state.mtime_ns if whole else 0,
        completed_at=found.completed_at or utc_now(),
        end_reason=found.end_reason,
        ctime_ns=ctime_ns if whole else 0,
        sha256_hex=found.sha256_hex,
        object_etag=found.object_etag,
        object_crc32c=found.object_crc32c,
        proof=found.proof,
        host=host,
        extensions=found.extensions,
    )


async def _same_bytes(source: SourceFile, spans: Sequence[Span]) -> bool:
    for span in spans:
        if await source.crc32c_of(span.offset_bytes, span.size_bytes) != span.crc32c:
            return False
    return True
