"""The metadata document: the seed's fields, streamup's additions, and the invariants it guards."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest

import streamup
from streamup.after.metadata import build_metadata, content_type_for, encode_metadata
from streamup.checksums import crc32c_of
from streamup.files.probe import ProbeResult
from streamup.models import EndReason, Extension, FileIdentity, PartRecord, Status, StreamRecord

MiB = 1024 * 1024
STARTED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
COMPLETED = STARTED + timedelta(minutes=10)
# Deliberately not UTC: every timestamp in the document must come out in UTC anyway.
PROCESSED = datetime(2024, 5, 1, 14, 10, 30, 250000, tzinfo=timezone(timedelta(hours=2)))

SEED_FIELDS = [
    "stream_id",
    "original_file_path",
    "s3_bucket",
    "s3_key_prefix",
    "total_size_bytes",
    "duration_seconds",
    "processed_at_utc",
    "stream_started_at_utc",
    "stream_completed_at_utc",
    "chunks",
]
EXTRA_FIELDS = [
    "sha256",
    "checksum",
    "integrity_proof",
    "content_type",
    "container",
    "video",
    "audio_codec",
    "bit_rate",
    "parts_reuploaded",
    "bytes_sent",
    "bytes_copied",
    "end_reason",
    "partial",
    "probe_error",
    "key_collision_of",
    "extended_from",
    "streamup_version",
]

PROBE = ProbeResult(
    duration_seconds=612.48,
    format_name="mov,mp4,m4a,3gp,3g2,mj2",
    video_codec="h264",
    width=1920,
    height=1080,
    frame_rate=29.97,
    video_bit_rate=4_000_000,
    audio_codec="aac",
    bit_rate=4_128_000,
)


def make_stream(**changes: object) -> StreamRecord:
    stream = StreamRecord(
        stream_id="3f2b8c1e-0000-4000-8000-000000000001",
        path="/data/watch/cam1/2024-05-01.mp4",
        relative_path="cam1/2024-05-01.mp4",
        bucket="video-streams",
        key="streams/3f2b8c1e-0000-4000-8000-000000000001/cam1/2024-05-01.mp4",
        status=Status.S3_COMPLETED,
        identity=FileIdentity(device=1, inode=2),
        part_size_bytes=8 * MiB,
        part_size_fixed=False,
        started_at=STARTED,
        last_activity_at=COMPLETED,
        upload_id="upload-1",
        size_bytes=20 * MiB + 123,
        uploaded_bytes=20 * MiB + 123,
        reuploaded_parts=1,
        sha256_hex="ab" * 32,
        completed_at=COMPLETED,
    )
    return stream.evolve(**changes)


def make_parts(sizes: Sequence[int]) -> list[PartRecord]:
    parts, offset = [], 0
    for number, size in enumerate(sizes, start=1):
        uploaded_at = STARTED + timedelta(minutes=number)
        parts.append(PartRecord(number, offset, size, f'"etag-{number}"', "0" * 32, uploaded_at))
        offset += size
    return parts


SIZES = [8 * MiB, 8 * MiB, 4 * MiB + 123]


def build(
    stream: StreamRecord | None = None,
    parts: Sequence[PartRecord] | None = None,
    probe: ProbeResult = PROBE,
    proof: str = "etag_compared",
) -> dict[str, object]:
    return build_metadata(
        stream or make_stream(),
        make_parts(SIZES) if parts is None else parts,
        probe,
        processed_at=PROCESSED,
        content_type="video/mp4",
        proof=proof,
    )


def test_an_unproven_object_publishes_no_sha256() -> None:
    # The file's SHA-256 is published only for an object proven equal to the parts sent.
    assert build(proof="server_verified")["sha256"] == "ab" * 32
    doc = build(proof="unverified")
    assert doc["sha256"] is None and doc["integrity_proof"] == "unverified"


def test_parts_with_crc32c_give_the_composite_checksum_of_the_object() -> None:
    bodies = [b"a" * 10, b"b" * 7]
    parts = [
        PartRecord(n, 10 * (n - 1), len(b), f'"e{n}"', "", STARTED, crc32c_hex=crc32c_of(b).hex())
        for n, b in enumerate(bodies, start=1)
    ]
    doc = build(parts=parts)
    whole = base64.b64encode(crc32c_of(crc32c_of(bodies[0]) + crc32c_of(bodies[1]))).decode()
    assert doc["checksum"] == {"algorithm": "CRC32C", "type": "COMPOSITE", "value": f"{whole}-2"}
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert chunks[1]["checksum_crc32c"] == base64.b64encode(crc32c_of(bodies[1])).decode()
    assert build()["checksum"] is None  # parts from before checksums: none to report


def test_document_has_the_seed_fields_first_then_the_extras_in_order() -> None:
    assert list(build()) == SEED_FIELDS + EXTRA_FIELDS


def test_document_fields_one_by_one() -> None:
    doc = build()
    stream = make_stream()
    assert doc["stream_id"] == stream.stream_id
    assert doc["original_file_path"] == "/data/watch/cam1/2024-05-01.mp4"
    assert doc["s3_bucket"] == "video-streams"
    assert doc["s3_key_prefix"] == stream.key
    assert doc["total_size_bytes"] == 20 * MiB + 123
    assert doc["duration_seconds"] == 612.48
    assert doc["processed_at_utc"] == "2024-05-01T12:10:30.250000+00:00"
    assert doc["stream_started_at_utc"] == "2024-05-01T12:00:00+00:00"
    assert doc["stream_completed_at_utc"] == "2024-05-01T12:10:00+00:00"
    assert doc["chunks"] == [
        {
            "part_number": 1,
            "size_bytes": 8 * MiB,
            "etag": '"etag-1"',
            "uploaded_at_utc": "2024-05-01T12:01:00+00:00",
        },
        {
            "part_number": 2,
            "size_bytes": 8 * MiB,
            "etag": '"etag-2"',
            "uploaded_at_utc": "2024-05-01T12:02:00+00:00",
        },
        {
            "part_number": 3,
            "size_bytes": 4 * MiB + 123,
            "etag": '"etag-3"',
            "uploaded_at_utc": "2024-05-01T12:03:00+00:00",
        },
    ]
    assert doc["sha256"] == "ab" * 32
    assert doc["content_type"] == "video/mp4"
    assert doc["container"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert doc["video"] == {
        "codec": "h264",
        "width": 1920,
        "height": 1080,
        "frame_rate": 29.97,
        "bit_rate": 4_000_000,
    }
    assert doc["audio_codec"] == "aac"
    assert doc["bit_rate"] == 4_128_000
    assert doc["parts_reuploaded"] == 1
    assert doc["end_reason"] == "idle"
    assert doc["partial"] is False
    assert doc["probe_error"] is None
    assert doc["streamup_version"] == streamup.__version__


def test_chunks_are_sorted_and_sum_to_the_total_even_when_given_unsorted() -> None:
    parts = make_parts([5 * MiB, 6 * MiB, 7 * MiB, 1])
    doc = build(parts=[parts[2], parts[0], parts[3], parts[1]])
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert [chunk["part_number"] for chunk in chunks] == [1, 2, 3, 4]
    assert sum(chunk["size_bytes"] for chunk in chunks) == doc["total_size_bytes"] == 18 * MiB + 1


def test_timestamps_are_iso_utc() -> None:
    doc = build()
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    stamps = [doc["processed_at_utc"], doc["stream_started_at_utc"], doc["stream_completed_at_utc"]]
    stamps += [chunk["uploaded_at_utc"] for chunk in chunks]
    for stamp in stamps:
        assert isinstance(stamp, str) and stamp.endswith("+00:00")
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)


def test_completed_at_falls_back_to_processed_at() -> None:
    doc = build(stream=make_stream(completed_at=None))
    assert doc["stream_completed_at_utc"] == doc["processed_at_utc"]


def test_a_lost_file_marks_the_object_partial() -> None:
    doc = build(stream=make_stream(end_reason=EndReason.FILE_LOST, sha256_hex=None))
    assert doc["partial"] is True
    assert doc["end_reason"] == "file_lost"
    assert doc["sha256"] is None


@pytest.mark.parametrize(
    "reason", [EndReason.IDLE, EndReason.FILE_DELETED, EndReason.FILE_REPLACED]
)
def test_other_end_reasons_are_not_partial(reason: EndReason) -> None:
    doc = build(stream=make_stream(end_reason=reason))
    assert doc["partial"] is False
    assert doc["end_reason"] == reason.value


def test_audio_only_file_has_null_video() -> None:
    audio_only = ProbeResult(duration_seconds=2.0, format_name="mov", audio_codec="aac")
    doc = build(probe=audio_only)
    assert doc["video"] is None
    assert doc["audio_codec"] == "aac"


def test_failed_probe_gives_null_fields_and_its_error() -> None:
    doc = build(probe=ProbeResult(error="ffprobe timed out after 30 s"))
    assert doc["duration_seconds"] is None
    assert doc["video"] is None
    assert (doc["container"], doc["audio_codec"], doc["bit_rate"]) == (None, None, None)
    assert doc["probe_error"] == "ffprobe timed out after 30 s"
    assert doc["total_size_bytes"] == sum(SIZES)  # the rest of the document is unaffected


def shifted(
    part: PartRecord, *, number: int | None = None, offset: int | None = None
) -> PartRecord:
    return PartRecord(
        part.number if number is None else number,
        part.offset_bytes if offset is None else offset,
        part.size_bytes,
        part.etag,
        part.md5_hex,
        part.uploaded_at,
    )


BAD_PART_LISTS = {
    "no parts": ([], "no parts"),
    "gap in numbers": (
        [make_parts(SIZES)[0], shifted(make_parts(SIZES)[1], number=3)],
        "expected part 2, found 3",
    ),
    "duplicate number": (
        [make_parts(SIZES)[0], make_parts(SIZES)[0]],
        "expected part 2, found 1",
    ),
    "not starting at 1": ([shifted(make_parts(SIZES)[0], number=2)], "expected part 1, found 2"),
    "gap in offsets": (
        [make_parts(SIZES)[0], shifted(make_parts(SIZES)[1], offset=8 * MiB + 1)],
        "part 2 starts at byte 8388609, but the previous part ends at byte 8388608",
    ),
    "overlap": (
        [make_parts(SIZES)[0], shifted(make_parts(SIZES)[1], offset=1)],
        "part 2 starts at byte 1",
    ),
    "first part not at 0": ([shifted(make_parts(SIZES)[0], offset=5)], "part 1 starts at byte 5"),
}


@pytest.mark.parametrize(("parts", "message"), BAD_PART_LISTS.values(), ids=BAD_PART_LISTS.keys())
def test_parts_that_do_not_form_one_object_raise(parts: list[PartRecord], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(parts=parts)


def test_naive_processed_at_raises() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_metadata(
            make_stream(),
            make_parts(SIZES),
            PROBE,
            processed_at=datetime(2024, 5, 1, 12, 0),  # naive on purpose
            content_type="video/mp4",
        )


def test_encoded_document_is_indented_utf8_json_with_a_trailing_newline() -> None:
    doc = build(stream=make_stream(path="/data/watch/café/prise №1.mp4"))
    body = encode_metadata(doc)
    assert body.endswith(b"}\n")
    assert b'\n  "stream_id": ' in body
    assert "café/prise №1.mp4".encode() in body  # readable, not \u-escaped
    assert json.loads(body) == doc


def test_encoded_document_survives_a_file_name_that_is_not_utf8() -> None:
    undecodable = b"/data/watch/cam\xff.mp4".decode("utf-8", errors="surrogateescape")
    body = encode_metadata(build(stream=make_stream(path=undecodable)))
    assert json.loads(body)["original_file_path"] == undecodable


def test_encoding_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_metadata({"duration_seconds": float("nan")})


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/w/a.mp4", "video/mp4"),
        ("/w/A.MP4", "video/mp4"),
        ("/w/a.m4v", "video/mp4"),
        ("/w/a.mov", "video/quicktime"),
        ("/w/a.mkv", "video/x-matroska"),
        ("/w/a.webm", "video/webm"),
        ("/w/a.ts", "video/mp2t"),
        ("/w/a.m2ts", "video/mp2t"),
        ("/w/a.flv", "video/x-flv"),
        ("/w/a.avi", "video/x-msvideo"),
        ("/w/a.mpg", "video/mpeg"),
        ("/w/a.MPEG", "video/mpeg"),
        ("/w/a.3gp", "video/3gpp"),
        ("/w/cam1:front.mp4", "video/mp4"),
        ("/w/notes.txt", "text/plain"),  # not a video: mimetypes knows it
        ("/w/a.unknownext", "application/octet-stream"),
        ("/w/no_extension", "application/octet-stream"),
        ("/w/a.mp4.gz", "application/octet-stream"),
        ("/w.d/file", "application/octet-stream"),
    ],
)
def test_content_type_for(path: str, content_type: str) -> None:
    assert content_type_for(path) == content_type


def test_an_extended_object_says_what_it_was_built_from_and_what_was_copied() -> None:
    parts = make_parts(SIZES)
    parts[:2] = [dataclasses.replace(p, copied=True) for p in parts[:2]]
    extends = Extension("older-stream", 16 * MiB, '"e0-2"', count=2)
    # bytes_copied: what the parts say; bytes_sent: the stream's count (a part sent twice
    # counts twice)
    doc = build(make_stream(extends=extends, bytes_sent=2 * (4 * MiB + 123)), parts)
    assert doc["extended_from"] == {
        "stream_id": "older-stream", "size_bytes": 16 * MiB, "etag": '"e0-2"', "extensions": 2,
    }  # fmt: skip
    assert (doc["bytes_copied"], doc["bytes_sent"]) == (16 * MiB, 2 * (4 * MiB + 123))
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert [c.get("copied", False) for c in chunks] == [True, True, False]
    plain = build(make_stream(bytes_sent=sum(SIZES)))
    assert plain["extended_from"] is None
    assert (plain["bytes_copied"], plain["bytes_sent"]) == (0, sum(SIZES))
