"""What a metadata document must say before a file without a record counts as its object's
(stream.recognition.described, pure), and where such an object may be (s3.keys)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from streamup.after.metadata import build_metadata
from streamup.checksums import composite_crc32c, multipart_etag
from streamup.files.probe import ProbeResult
from streamup.models import EndReason, Status
from streamup.s3.client import RemoteObject
from streamup.s3.keys import KeyFields, KeySearch, parse_template
from streamup.stream.recognition import Described, described
from tests.test_checkpoint_contract import MiB, make_part, make_stream

PATH = "/watch/cam/s1.mp4"
SIZE = 8 * MiB + 100
DONE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def document(**changes: Any) -> tuple[dict[str, Any], RemoteObject]:
    """A real metadata document of a two-part object, and what HeadObject says of it."""
    parts = [make_part(1), dataclasses.replace(make_part(2), size_bytes=100)]
    stream = make_stream(
        status=Status.COMPLETED, size_bytes=SIZE, sha256_hex="ab" * 32, completed_at=DONE,
        end_reason=EndReason.FILE_DELETED,
    )  # fmt: skip
    doc = build_metadata(
        stream, parts, ProbeResult(), processed_at=DONE, content_type="video/mp4",
        proof="checksum_compared",
    )  # fmt: skip
    doc.update(changes)
    remote = RemoteObject(
        size_bytes=SIZE,
        etag=multipart_etag(bytes.fromhex(p.md5_hex) for p in parts),
        crc32c=composite_crc32c(bytes.fromhex(p.crc32c_hex) for p in parts),
    )
    return doc, remote


def test_a_document_of_this_file_gives_the_parts_to_compare_and_the_record_fields() -> None:
    doc, remote = document()
    found = described(doc, remote, PATH, SIZE)
    assert isinstance(found, Described)
    assert [(s.offset_bytes, s.size_bytes, s.crc32c.hex()) for s in found.spans] == [
        (0, 8 * MiB, "00000001"),
        (8 * MiB, 100, "00000002"),
    ]
    assert (found.stream_id, found.sha256_hex, found.proof) == (
        "s1",
        "ab" * 32,
        "checksum_compared",
    )
    assert (found.object_etag, found.object_crc32c) == (remote.etag, remote.crc32c)
    assert (found.completed_at, found.end_reason) == (DONE, EndReason.FILE_DELETED)
    # A server that reports no CRC32C: the ETag alone ties the parts to the object.
    assert isinstance(
        described(doc, dataclasses.replace(remote, crc32c=None), PATH, SIZE), Described
    )


def test_a_file_that_grew_since_is_described_by_its_object_prefix() -> None:
    doc, remote = document()
    found = described(doc, remote, PATH, SIZE + 5 * MiB)
    assert isinstance(found, Described)
    assert found.size_bytes == SIZE  # the record is the completed prefix's: then extended
    assert sum(span.size_bytes for span in found.spans) == SIZE


def _chunks(**changes: Any) -> list[dict[str, Any]]:
    doc, _ = document()
    chunks: list[dict[str, Any]] = doc["chunks"]
    chunks[1].update(changes)
    return chunks


@pytest.mark.parametrize(
    ("doc_changes", "remote_changes", "size", "reason"),
    [
        ({"original_file_path": "/watch/cam/other.mp4"}, {}, SIZE, "another file's"),
        ({"partial": True}, {}, SIZE, "partial"),
        ({}, {}, SIZE - 1, "sizes differ"),  # the file shrank
        ({}, {"size_bytes": SIZE + 1}, SIZE, "sizes differ"),
        ({"chunks": []}, {}, SIZE, "no parts"),
        ({"chunks": _chunks(part_number=3)}, {}, SIZE, "not in order"),
        ({"chunks": _chunks(checksum_crc32c=None)}, {}, SIZE, "no CRC32C"),
        ({"chunks": _chunks(size_bytes=99)}, {}, SIZE, "do not add up"),
        ({"total_size_bytes": "8 MiB"}, {}, SIZE, "sizes differ"),
        ({}, {"crc32c": "AAAAAA=="}, SIZE, "CRC32C is not its parts'"),
        ({}, {"etag": '"' + "0" * 32 + '-2"'}, SIZE, "ETag is not its parts'"),
        ({"chunks": _chunks(etag='"not-an-md5"')}, {}, SIZE, "ETag is not its parts'"),
    ],
)
def test_anything_short_of_the_whole_chain_is_not_recognised(
    doc_changes: dict[str, Any], remote_changes: dict[str, Any], size: int, reason: str
) -> None:
    doc, remote = document(**doc_changes)
    found = described(doc, dataclasses.replace(remote, **remote_changes), PATH, size)
    assert isinstance(found, str) and reason in found


def test_not_a_document_is_not_recognised() -> None:
    _, remote = document()
    assert described(None, remote, PATH, SIZE) == "no metadata document"
    assert described(["a"], remote, PATH, SIZE) == "no metadata document"


FIELDS = KeyFields("streams", "5e0b4f2c", "cam1/a.mp4", "edge-1", DONE)


@pytest.mark.parametrize(
    ("template", "around"),
    [
        ("{prefix}/{stream_id}/{path}", ("streams/", "/cam1/a.mp4")),
        ("{prefix}/{dir}/{stream_id}-{name}", ("streams/cam1/", "-a.mp4")),
        ("{prefix}/{path}", None),  # numbered keys instead
        ("{prefix}/{started:%Y}/{stream_id}/{name}", None),  # changes with time
    ],
)
def test_where_a_key_with_a_stream_id_may_be(template: str, around: tuple[str, str] | None) -> None:
    search = parse_template(template).search(FIELDS)
    found = None if search is None or search.numbered else (search.before, search.after)
    assert found == around


def test_numbered_keys_are_searched_in_order_under_their_folder() -> None:
    search = parse_template("{prefix}/{path}").search(FIELDS)
    assert search is not None
    assert search.numbered[:2] == ("streams/cam1/a.mp4", "streams/cam1/a-2.mp4")
    assert search.prefix == "streams/cam1/"
    assert search.fits("streams/cam1/a-2.mp4") and not search.fits("streams/cam1/b.mp4")
    assert search.stream_id_of("streams/cam1/a.mp4") is None


def test_a_listed_key_fits_only_with_one_stream_id_in_its_place() -> None:
    search = KeySearch((), "streams/", "/cam1/a.mp4")
    assert search.fits("streams/5e0b4f2c/cam1/a.mp4")
    assert search.stream_id_of("streams/5e0b4f2c/cam1/a.mp4") == "5e0b4f2c"
    assert not search.fits("streams//cam1/a.mp4")  # no stream id
    assert not search.fits("streams/x/y/cam1/a.mp4")  # two folders
    assert not search.fits("streams/5e0b4f2c/cam2/a.mp4")
    assert not search.fits("other/5e0b4f2c/cam1/a.mp4")
