"""One copied part (an extension's kept bytes, stream.extension, or a faststart rebuild's shifted
ones, stream.rebuild): UploadPartCopy, proven against the file.

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
from streamup.models import Proof
from streamup.s3.client import S3Storage
from streamup.s3.integrity import Capabilities, ProofMode, Proven
from streamup.stream.extension import copy_proven

log = structlog.get_logger("streamup")

# Answers that mean this server will not copy parts at all: said once, and no copy is asked for
# again while the agent runs (every part is sent).
_REFUSED: set[str] = set()


def copies_refused() -> bool:
    """The server refused UploadPartCopy: plan nothing that needs it."""
    return bool(_REFUSED)


async def copy_or_none(
    storage: S3Storage,
    key: str,
    upload_id: str,
    data: PartData,
    caps: Capabilities,
    *,
    first: int | None = None,
) -> Proven | None:
    """The ETag of part `data.span` copied from the object at `key` (its bytes from offset
    `first`, by default the part's own offset) and how the copy was proven, or None when it must
    be sent instead. Retryable errors (and a vanished upload) propagate to the caller's retry."""
    span = data.span
    if _REFUSED:
        return None
    start = span.offset_bytes if first is None else first
    try:
        copied = await storage.copy_part(
            key, upload_id, span.number, key, start, start + span.size_bytes - 1
        )
    except NoSuchUpload:
        raise
    except StorageError as exc:
        # 501 NotImplemented is a server without UploadPartCopy, not weather: never retried.
        refused = exc.code in ("NotImplemented", "501")
        if exc.retryable and not refused:
            raise
        if refused:
            _REFUSED.add(exc.code)
        log.warning("s3.copy_refused" if refused else "part.copy_failed", key=key,
                    part=span.number, code=exc.code, error=str(exc),
                    action="sending the bytes instead")  # fmt: skip
        return None
    # A copy carries no Content-MD5 for the server to check: its ETag is compared with the MD5
    # of the file's bytes wherever the server's part ETag is the MD5 (moto, Ceph RGW).
    md5 = data.md5.hex() if data.md5 is not None and caps.etag_is_md5 else None
    if copied.crc32c is None and md5 is None and caps.mode is not ProofMode.NONE:
        log.warning("part.copy_mismatch", key=key, part=span.number,
                    reason="the server reported nothing the copy could be proven by",
                    action="sending the bytes instead")  # fmt: skip
        return None
    reason = copy_proven(
        etag_hex=etag_hex(copied.etag), crc32c_b64=copied.crc32c, md5_hex=md5,
        local_crc32c_b64=b64(data.crc32c),
    )  # fmt: skip
    if reason is not None:
        metrics.PARTS_PROOF_FAILED.inc()
        log.warning("part.copy_mismatch", key=key, part=span.number, reason=reason,
                    action="sending the bytes instead")  # fmt: skip
        return None
    if copied.crc32c is not None:
        return Proven(copied.etag, Proof.CHECKSUM_COMPARED)
    return Proven(copied.etag, Proof.ETAG_COMPARED if md5 is not None else Proof.UNVERIFIED)
