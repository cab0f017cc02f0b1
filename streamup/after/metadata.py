"""Build the metadata document written next to a completed video object. Pure: no I/O.

The seed's fields come first, in the seed's order, so existing consumers keep working; the
fields streamup adds follow them.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from collections.abc import Sequence
from datetime import datetime

import streamup
from streamup.checksums import composite_crc32c
from streamup.files.probe import ProbeResult
from streamup.models import EndReason, PartRecord, StreamRecord, iso

_FALLBACK_CONTENT_TYPE = "application/octet-stream"

# Fixed here rather than left to `mimetypes`, whose answers depend on the host's mime.types
# (several distributions have no entry for .mkv or map .ts to Qt translation files).
_VIDEO_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".flv": "video/x-flv",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".3gp": "video/3gpp",
}


def metadata_key(video_key: str) -> str:
    """The key of the metadata document that describes the object at `video_key`."""
    return f"{video_key}.metadata.json"


def content_type_for(path: str) -> str:
    """The Content-Type of a file, from its extension (case-insensitive)."""
    extension = os.path.splitext(path)[1].lower()
    known = _VIDEO_CONTENT_TYPES.get(extension)
    if known is not None:
        return known
    # Only the extension goes to mimetypes: given the whole path it parses URLs, and a file
    # named "cam1:front.xyz" would be read as a "cam1" URL.
    guessed, encoding = mimetypes.guess_type(f"file{extension}")
    # A compressed file ("x.tar.gz") is not of the type mimetypes names for what is inside.
    if guessed is None or encoding is not None:
        return _FALLBACK_CONTENT_TYPE
    return guessed


def build_metadata(
    stream: StreamRecord,
    parts: Sequence[PartRecord],
    probe: ProbeResult,
    *,
    processed_at: datetime,
    content_type: str,
    proof: str = "unverified",
) -> dict[str, object]:
    """The metadata document of a completed stream.

    `proof` says how the object was proven equal to the parts sent (models.Proof):
    `sha256`, the file's hash, is published only for a proven object.

    Raises `ValueError` when `parts` cannot describe one complete object (missing, duplicate or
    overlapping parts): the caller records `failed_metadata_generation` rather than publish a
    document whose sizes do not add up to the object.
    """
    if processed_at.tzinfo is None:
        # iso() would read a naive time as local time and shift it silently.
        raise ValueError("processed_at must be timezone-aware")
    ordered = sorted(parts, key=lambda part: part.number)
    _check_parts(ordered)
    completed_at = stream.completed_at if stream.completed_at is not None else processed_at
    return {
        # The seed's schema.
        "stream_id": stream.stream_id,
        "original_file_path": stream.path,
        "s3_bucket": stream.bucket,
        "s3_key_prefix": stream.key,
        "total_size_bytes": sum(part.size_bytes for part in ordered),
        "duration_seconds": probe.duration_seconds,
        "processed_at_utc": iso(processed_at),
        "stream_started_at_utc": iso(stream.started_at),
        "stream_completed_at_utc": iso(completed_at),
        "chunks": [
            {
                "part_number": part.number,
                "size_bytes": part.size_bytes,
                "etag": part.etag,
                "uploaded_at_utc": iso(part.uploaded_at),
                **_part_checksum(part),
                **({"copied": True} if part.copied else {}),
            }
            for part in ordered
        ],
        # streamup's additions.
        "sha256": stream.sha256_hex if proof != "unverified" else None,
        "checksum": _object_checksum(ordered),
        "integrity_proof": proof,
        "content_type": content_type,
        "container": probe.format_name,
        "video": _video_section(probe),
        "audio_codec": probe.audio_codec,
        "bit_rate": probe.bit_rate,
        "parts_reuploaded": stream.reuploaded_parts,
        "bytes_sent": stream.bytes_sent,
        # Bytes the server copied from an object it held (UploadPartCopy), as the parts say.
        "bytes_copied": sum(part.size_bytes for part in ordered if part.copied),
        "end_reason": stream.end_reason.value,
        # The file vanished while the agent was down: the object holds what was uploaded
        # before, and nothing could check it against the final file.
        "partial": stream.end_reason is EndReason.FILE_LOST,
        "probe_error": probe.error,
        # The key S3_KEY_TEMPLATE gave, when another object held it and this one got a
        # numbered key instead; null otherwise.
        "key_collision_of": stream.key_collision_of or None,
        # The file grew after its stream completed: the object at this key was replaced by its
        # longer self, built from it (stream.extension); null for an object made afresh.
        "extended_from": _extended_from(stream),
        "streamup_version": streamup.__version__,
    }


def _extended_from(stream: StreamRecord) -> dict[str, object] | None:
    extends = stream.extends
    if extends is None:
        return None
    return {
        "stream_id": extends.stream_id,
        "size_bytes": extends.size_bytes,
        "etag": extends.etag,
        "extensions": extends.count,
    }


def _part_checksum(part: PartRecord) -> dict[str, str]:
    if not part.crc32c_hex:
        return {}
    return {"checksum_crc32c": base64.b64encode(bytes.fromhex(part.crc32c_hex)).decode("ascii")}


def _object_checksum(ordered: Sequence[PartRecord]) -> dict[str, str] | None:
    """The object's COMPOSITE CRC32C as S3 reports it (`value-N`), when every part has one."""
    if not ordered or not all(part.crc32c_hex for part in ordered):
        return None
    value = composite_crc32c(bytes.fromhex(part.crc32c_hex) for part in ordered)
    return {"algorithm": "CRC32C", "type": "COMPOSITE", "value": f"{value}-{len(ordered)}"}


def _check_parts(ordered: Sequence[PartRecord]) -> None:
    """Raise `ValueError` unless `ordered` are parts 1..n covering bytes 0..total without gaps.

    `ordered` must already be sorted by part number.
    """
    if not ordered:
        raise ValueError("no parts: a completed object has at least one part")
    expected_offset = 0
    for expected_number, part in enumerate(ordered, start=1):
        if part.number != expected_number:
            numbers = [p.number for p in ordered]
            raise ValueError(
                f"parts are not numbered 1..{len(ordered)} without gaps or duplicates: "
                f"expected part {expected_number}, found {part.number} (parts {numbers})"
            )
        if part.size_bytes < 0:
            raise ValueError(f"part {part.number} has a negative size ({part.size_bytes})")
        if part.offset_bytes != expected_offset:
            raise ValueError(
                f"part {part.number} starts at byte {part.offset_bytes}, but the previous "
                f"part ends at byte {expected_offset}: the parts do not form one object"
            )
        expected_offset = part.end_bytes


def _video_section(probe: ProbeResult) -> dict[str, object] | None:
    section: dict[str, object] = {
        "codec": probe.video_codec,
        "width": probe.width,
        "height": probe.height,
        "frame_rate": probe.frame_rate,
        "bit_rate": probe.video_bit_rate,
    }
    # No field at all means no video stream (an audio file, a failed probe).
    return section if any(value is not None for value in section.values()) else None


def encode_metadata(doc: dict[str, object]) -> bytes:
    """The document as UTF-8 JSON, indented, with a trailing newline."""
    # allow_nan=False: NaN and Infinity are not JSON, and other parsers reject them.
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    # A file name with bytes that are not UTF-8 reaches Python as lone surrogates, which UTF-8
    # cannot encode; backslashreplace writes them as JSON "\udcXX" escapes instead of failing.
    return (text + "\n").encode("utf-8", errors="backslashreplace")
