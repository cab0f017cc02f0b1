"""Pure: how a shifted file's final object is made from its stale upload (a faststart MP4).

`-movflags +faststart` moves `moov` to the front when the recording stops: everything the upload
sent during the recording now sits `shift_bytes` further on. The stale upload is completed as it
is (its object is a temporary one, at the stream's key), and the final object is built from it:
the ranges of the file that are old parts, shifted, are copied by the server (UploadPartCopy);
the rest (the head with the new `moov`, any part that did change, the tail) is sent from the file.

Every piece but the last is at least 5 MiB and none more than 5 GiB (S3's part rules, which copied
parts obey too), so where the head part ends is shaped by the first copied range.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from streamup.models import StreamRecord
from streamup.s3.parts import MAX_PART_SIZE_BYTES, MAX_PARTS, MIN_PART_SIZE_BYTES


@dataclass(frozen=True, slots=True)
class Piece:
    """One part of the final object: `size_bytes` of the file from `offset_bytes`, copied from
    the stale object at `source_offset` (when not None) or sent from the file."""

    number: int
    offset_bytes: int
    size_bytes: int
    source_offset: int | None = None

    @property
    def copied(self) -> bool:
        return self.source_offset is not None


@dataclass(frozen=True, slots=True)
class StalePart:
    """A part of the stale upload, as CompleteMultipartUpload names it."""

    number: int
    etag: str
    crc32c_hex: str
    md5_hex: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Rebuild:
    """The checkpointed intent of a rebuild (StreamRecord.rebuild)."""

    stale_upload_id: str
    stale_parts: tuple[StalePart, ...]
    stale_etag: str  # the multipart ETag the stale object has once completed ("" if unknown)
    shift_bytes: int
    pieces: tuple[Piece, ...]
    file_size_bytes: int
    file_mtime_ns: int
    stale_completed: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rebuild:
        data = json.loads(text)
        return cls(
            stale_upload_id=str(data["stale_upload_id"]),
            stale_parts=tuple(StalePart(**p) for p in data["stale_parts"]),
            stale_etag=str(data["stale_etag"]),
            shift_bytes=int(data["shift_bytes"]),
            pieces=tuple(Piece(**p) for p in data["pieces"]),
            file_size_bytes=int(data["file_size_bytes"]),
            file_mtime_ns=int(data["file_mtime_ns"]),
            stale_completed=bool(data["stale_completed"]),
        )

    @property
    def copied_bytes(self) -> int:
        return sum(p.size_bytes for p in self.pieces if p.copied)


def stale_upload_of(record: StreamRecord) -> str | None:
    """The stale upload a rebuild under way still needs (the orphan reaper leaves it alone)."""
    if not record.rebuild:
        return None
    try:
        return Rebuild.from_json(record.rebuild).stale_upload_id
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Shifted:
    """An old part found again in the final file: its range there, and in the stale object."""

    offset_bytes: int  # in the final file
    size_bytes: int
    source_offset: int  # in the stale object


def plan_pieces(found: list[Shifted], size_bytes: int, part_bytes: int) -> tuple[Piece, ...] | None:
    """The final object's parts: each found range copied, the gaps and the tail sent (cut into
    `part_bytes` pieces, a gap's remainder going into its last piece). None when nothing would
    be copied or S3's part rules cannot be kept (then everything is sent, as before)."""
    pieces: list[Piece] = []
    cursor = 0
    for shifted in sorted(found, key=lambda s: s.offset_bytes):
        if shifted.offset_bytes < cursor or shifted.offset_bytes + shifted.size_bytes > size_bytes:
            continue
        _send(pieces, cursor, shifted.offset_bytes, part_bytes, tail=False)
        pieces.append(
            Piece(len(pieces) + 1, shifted.offset_bytes, shifted.size_bytes, shifted.source_offset)
        )
        cursor = shifted.offset_bytes + shifted.size_bytes
    _send(pieces, cursor, size_bytes, part_bytes, tail=True)
    if not any(p.copied for p in pieces) or not _lawful(pieces):
        return None
    return tuple(pieces)


def _send(pieces: list[Piece], start: int, end: int, part_bytes: int, *, tail: bool) -> None:
    """Cut [start, end) of the file into sent pieces of `part_bytes`: a gap's remainder joins
    its last piece (every piece before a copy must be >= 5 MiB); the tail's last piece is short."""
    offset = start
    while offset < end:
        size = min(part_bytes, end - offset)
        if not tail and end - (offset + size) < part_bytes:
            size = end - offset
        pieces.append(Piece(len(pieces) + 1, offset, size))
        offset += size


def _lawful(pieces: list[Piece]) -> bool:
    if len(pieces) > MAX_PARTS:
        return False
    last = len(pieces) - 1
    return all(
        (p.size_bytes >= MIN_PART_SIZE_BYTES or n == last) and p.size_bytes <= MAX_PART_SIZE_BYTES
        for n, p in enumerate(pieces)
    )
