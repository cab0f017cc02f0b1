"""The events a stream's end is told by, as documents. Pure: no I/O, no clock.

Every event has one shape (`{id, type, created_at, stream_id, bucket, key, metadata_key,
size_bytes, sha256, duration_seconds, metadata}`); a type adds fields only when it must (an
`error` for `stream.failed`, the local `path` for `file.deleted` and `file.moved`, and the
move's `moved_to`). The id is derived from the stream and the type, so an event built again
after a crash (the stream was finished twice) carries the same id and receivers can
de-duplicate on it.

Adding a type: a member of `EventType`, a builder that returns its document through
`_document`, a call where it happens. Delivery needs nothing new: it sends bodies, and each sink
says which types it takes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

from streamup.after.metadata import metadata_key
from streamup.models import CompletedRecord, OutboxEvent, Status, StreamRecord, iso

# Fixed for ever: event ids are uuid5(namespace, "{type}:{stream_id}").
_ID_NAMESPACE = uuid.UUID("6f1d3a52-8c1e-4f4e-9b7a-5e2c0d9a4b31")


class EventType(StrEnum):
    STREAM_COMPLETED = "stream.completed"  # the object and its metadata JSON are in S3
    STREAM_FAILED = "stream.failed"  # the stream ended for good without an object
    FILE_DELETED = "file.deleted"  # the local file is gone from WATCH_DIR (AFTER_UPLOAD, the guard)
    FILE_MOVED = "file.moved"  # the local file is now at `moved_to` (AFTER_UPLOAD=move)


def event_id(event_type: EventType, stream_id: str) -> str:
    """The stable id of a stream's event of `event_type`."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{event_type.value}:{stream_id}"))


def completed_document(
    stream: StreamRecord, metadata: Mapping[str, object], *, created_at: datetime
) -> dict[str, object]:
    """`stream.completed`: sizes, checksum and duration come from the metadata document itself,
    so the event can never disagree with the metadata object it points to."""
    return _document(
        EventType.STREAM_COMPLETED,
        stream,
        created_at=created_at,
        metadata_key=metadata_key(stream.key),
        size_bytes=metadata.get("total_size_bytes"),
        sha256=metadata.get("sha256"),
        duration_seconds=metadata.get("duration_seconds"),
        metadata=dict(metadata),
    )


def failed_document(stream: StreamRecord, *, created_at: datetime) -> dict[str, object]:
    """`stream.failed`: the stream ended without an object (`aborted_no_parts`: its file vanished
    while the agent was down, before any part reached S3). `key` is the key it would have had."""
    doc = _document(
        EventType.STREAM_FAILED,
        stream,
        created_at=created_at,
        metadata_key=None,
        size_bytes=0,
        sha256=None,
        duration_seconds=None,
        metadata=None,
    )
    doc["status"] = stream.status.value
    doc["end_reason"] = stream.end_reason.value
    doc["error"] = stream.error or (
        "the file vanished while the agent was not running, before any part was uploaded;"
        " no object was stored"
    )
    return doc


def stream_event(
    stream: StreamRecord,
    metadata: Mapping[str, object] | None,
    *,
    host: str,
    created_at: datetime,
) -> OutboxEvent | None:
    """The event a finished stream leaves in the outbox; None when its end tells nothing."""
    if stream.status is Status.COMPLETED and metadata is not None:
        doc = completed_document(stream, metadata, created_at=created_at)
    elif stream.status is Status.ABORTED_NO_PARTS:
        doc = failed_document(stream, created_at=created_at)
    else:
        return None
    return _outbox_event(doc, stream.stream_id, host=host, created_at=created_at)


def file_document(record: CompletedRecord, *, created_at: datetime) -> dict[str, object]:
    """`file.deleted` / `file.moved`: the local-file action carried out `record`'s intent
    (`local_action`, `local_target`). Size and checksum are the verified file's, which is the
    object; `duration_seconds` and `metadata` are null: the metadata object (`metadata_key`)
    holds them, and the completed record does not."""
    moved = record.local_action == "move"
    doc = _document(
        EventType.FILE_MOVED if moved else EventType.FILE_DELETED,
        record,
        created_at=created_at,
        metadata_key=metadata_key(record.key),
        size_bytes=record.size_bytes,
        sha256=record.sha256_hex or None,
        duration_seconds=None,
        metadata=None,
    )
    doc["path"] = record.path
    if moved:
        doc["moved_to"] = record.local_target
    return doc


def file_event(record: CompletedRecord, *, host: str, created_at: datetime) -> OutboxEvent:
    """The event the local-file action leaves in the outbox once its step is done."""
    doc = file_document(record, created_at=created_at)
    return _outbox_event(doc, record.stream_id, host=host, created_at=created_at)


def _outbox_event(
    doc: Mapping[str, object], stream_id: str, *, host: str, created_at: datetime
) -> OutboxEvent:
    return OutboxEvent(
        event_id=str(doc["id"]),
        event_type=str(doc["type"]),
        stream_id=stream_id,
        host=host,
        created_at=created_at,
        body=encode_event(doc),
    )


def encode_event(doc: Mapping[str, object]) -> str:
    """Compact JSON, ASCII only: the body is sent, signed and stored as this very text.

    ASCII escapes keep a file name that is not UTF-8 (lone surrogates) storable and sendable.
    """
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _document(
    event_type: EventType,
    stream: StreamRecord | CompletedRecord,
    *,
    created_at: datetime,
    **fields: object,
) -> dict[str, object]:
    return {
        "id": event_id(event_type, stream.stream_id),
        "type": event_type.value,
        "created_at": iso(created_at),
        "stream_id": stream.stream_id,
        "bucket": stream.bucket,
        "key": stream.key,
        "metadata_key": fields["metadata_key"],
        "size_bytes": fields["size_bytes"],
        "sha256": fields["sha256"],
        "duration_seconds": fields["duration_seconds"],
        "metadata": fields["metadata"],
    }
