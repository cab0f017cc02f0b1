"""Pure: a file that grows again after its stream completed, built from the completed object.

A recorder that paused longer than STREAM_TIMEOUT_SECONDS and went on makes the completed file
longer. When the file still begins with exactly the completed object (the SHA-256 of its first
`size_bytes` is the object's, which the completed record keeps) and the key still holds that very
object (its size and ETag), the grown object is built at the same key from the completed one: its
prefix by UploadPartCopy (nothing crosses the network but the requests), the new bytes sent. The
object is then replaced by its longer self. Anything else is a new stream at a new key, as before.

Part layout of an extension: the completed object's bytes as copied ranges, each of the stream's
part size except the last one, which also takes the completed object's short tail (a copied part is
not the last part of the new object, so it must be at least 5 MiB, and S3 lets a copied range start
and end anywhere); then the stream's schedule again, from the end of the copies. A completed object
under 5 MiB cannot be copied as a part that is not the last: it is sent again (it is small).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamup.models import CompletedRecord, EndReason, Extension, FileState, Status
from streamup.s3.parts import (
    MAX_OBJECT_SIZE_BYTES,
    MAX_PART_SIZE_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE_BYTES,
    PartSchedule,
    PartSpan,
)


def worth_checking(done: CompletedRecord | None, state: FileState) -> bool:
    """Whether a file that changed after its stream completed may be an extension of the object,
    before anything is read: the same file, longer, its stream ended normally and proven whole."""
    return (
        done is not None
        and done.status is Status.COMPLETED
        and done.end_reason is EndReason.IDLE
        and done.identity == state.identity
        and bool(done.key and done.sha256_hex)
        and 0 < done.size_bytes < state.size_bytes
    )


def plan_extension(
    done: CompletedRecord,
    schedule: PartSchedule,
    *,
    remote: tuple[int, str] | None,
    prefix_sha256: str | None,
) -> Extension | str:
    """The extension, or why the grown file is a new stream instead. `schedule` is the new
    stream's, `remote` what HeadObject shows at the completed key (size, ETag; None: no object
    there), `prefix_sha256` the SHA-256 of the file's first `done.size_bytes` now (None: the
    file is shorter)."""
    if len(copy_spans(done.size_bytes, schedule)) >= MAX_PARTS:
        return "the completed object needs more parts than S3 allows under this part size"
    if remote is None:
        return "the completed object is gone from its key"
    size_bytes, etag = remote
    if size_bytes != done.size_bytes:
        return f"the key holds {size_bytes} bytes, not the completed {done.size_bytes}"
    if done.object_etag and etag.strip('"') != done.object_etag.strip('"'):
        return f"the key holds another object (ETag {etag}, the completed one {done.object_etag})"
    if prefix_sha256 != done.sha256_hex:
        return "the file no longer begins with the completed object (its prefix changed)"
    return Extension(done.stream_id, done.size_bytes, etag, count=done.extensions + 1)


def copy_spans(prefix_bytes: int, schedule: PartSchedule) -> tuple[PartSpan, ...]:
    """The completed object's `prefix_bytes` as copied parts 1..k (see the module docstring)."""
    if prefix_bytes < MIN_PART_SIZE_BYTES:
        return ()
    spans: list[PartSpan] = []
    offset, number = 0, 1
    while number <= MAX_PARTS and offset + schedule.size_of(number) <= prefix_bytes:
        spans.append(PartSpan(number, offset, schedule.size_of(number)))
        offset += schedule.size_of(number)
        number += 1
    if offset == prefix_bytes or number > MAX_PARTS:  # the latter: refused by plan_extension
        return tuple(spans)
    if not spans:  # shorter than one part of the schedule, but at least 5 MiB
        return (PartSpan(1, 0, prefix_bytes),)
    last = spans.pop()
    merged = prefix_bytes - last.offset_bytes
    if merged <= MAX_PART_SIZE_BYTES:
        return (*spans, PartSpan(last.number, last.offset_bytes, merged))
    half = merged // 2  # both halves over 2.5 GiB: well above S3's 5 MiB minimum
    return (
        *spans,
        PartSpan(last.number, last.offset_bytes, half),
        PartSpan(last.number + 1, last.offset_bytes + half, merged - half),
    )


@dataclass(frozen=True, slots=True)
class ExtendedLayout:
    """Part numbers -> byte ranges of an extended object: `copies` (parts 1..k), then `rest`
    numbered from k+1 and starting where the copies end (an `s3.parts.Layout`)."""

    copies: tuple[PartSpan, ...]
    rest: PartSchedule

    @classmethod
    def of(cls, extension: Extension, schedule: PartSchedule) -> ExtendedLayout:
        return cls(copy_spans(extension.size_bytes, schedule), schedule)

    @property
    def copied_bytes(self) -> int:
        return self.copies[-1].end_bytes if self.copies else 0

    def is_copy(self, number: int) -> bool:
        return 1 <= number <= len(self.copies)

    def size_of(self, number: int) -> int:
        return self.span(number).size_bytes

    def offset_of(self, number: int) -> int:
        return self.span(number).offset_bytes

    def span(self, number: int) -> PartSpan:
        if self.is_copy(number):
            return self.copies[number - 1]
        k = len(self.copies)
        if not k < number <= MAX_PARTS:
            raise ValueError(f"part number {number} is outside S3's range 1..{MAX_PARTS}")
        inner = self.rest.span(number - k)
        return PartSpan(number, self.copied_bytes + inner.offset_bytes, inner.size_bytes)

    @property
    def capacity_bytes(self) -> int:
        end = self.span(MAX_PARTS).end_bytes if len(self.copies) < MAX_PARTS else 0
        return min(end, MAX_OBJECT_SIZE_BYTES)


def copy_proven(
    *, etag_hex: str, crc32c_b64: str | None, md5_hex: str | None, local_crc32c_b64: str
) -> str | None:
    """Why a copied part is not the file's bytes (None: it is, as far as the server tells).
    The server's CRC32C of the part, where it reports one, and its ETag, where the stream knows
    the MD5 (servers whose part ETag is the MD5: moto, Ceph RGW), must be the local bytes'."""
    if crc32c_b64 is not None and crc32c_b64 != local_crc32c_b64:
        return f"the copy's CRC32C is {crc32c_b64}, the file's {local_crc32c_b64}"
    if md5_hex is not None and etag_hex != md5_hex:
        return f"the copy's ETag is {etag_hex}, the MD5 of the file's bytes {md5_hex}"
    return None
