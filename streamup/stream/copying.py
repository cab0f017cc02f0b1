"""One copied part of an extension (stream.extension): UploadPartCopy, proven against the file.

The part's bytes were read from the file all the same (their CRC32C goes into the completion, the
running SHA-256 takes them in, the end-of-stream check compares them later); only the sending is
saved. A copy that does not prove to be the file's bytes, or a server that refuses UploadPartCopy,
means the part is sent after all: the object is exact either way.
"""

from __future__ import annotations

import structlog

from streamup import metrics
from streamup.checksums import b64, etag_hex
from streamup.errors import NoSuchUpload, StorageError
from streamup.files.source import PartData
from streamup.s3.client import S3Storage
from streamup.s3.integrity import Capabilities, ProofMode
from streamup.stream.extension import copy_proven

log = structlog.get_logger("streamup")

# Answers that mean this server will not copy parts at all: sent instead, said once.
_REFUSED_NOTED: set[str] = set()


async def copy_or_none(
    storage: S3Storage, key: str, upload_id: str, data: PartData, caps: Capabilities
) -> str | None:
    """The ETag of part `data.span` copied from the object at `key`, or None when it must be
    sent instead. Retryable errors (and a vanished upload) propagate to the caller's retry."""
    span = data.span
    try:
        copied = await storage.copy_part(
            key, upload_id, span.number, key, span.offset_bytes, span.end_bytes - 1
        )
    except NoSuchUpload:
        raise
    except StorageError as exc:
        # 501 NotImplemented is a server without UploadPartCopy, not weather: never retried.
        if exc.retryable and exc.code not in ("NotImplemented", "501"):
            raise
        if exc.code not in _REFUSED_NOTED:
            _REFUSED_NOTED.add(exc.code)
            log.warning("part.copy_refused", key=key, code=exc.code, error=str(exc),
                        action="sending the bytes instead")  # fmt: skip
        return None
    # Compared as an upload's ETag is (worker._upload_proven): only where the ETag is the proof.
    md5 = data.md5.hex() if data.md5 is not None and caps.mode is ProofMode.ETAG else None
    reason = copy_proven(
        etag_hex=etag_hex(copied.etag), crc32c_b64=copied.crc32c, md5_hex=md5,
        local_crc32c_b64=b64(data.crc32c),
    )  # fmt: skip
    if reason is not None:
        metrics.PARTS_PROOF_FAILED.inc()
        log.warning("part.copy_mismatch", key=key, part=span.number, reason=reason,
                    action="sending the bytes instead")  # fmt: skip
        return None
    return copied.etag
