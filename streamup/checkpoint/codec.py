"""Pure (de)serialisation of checkpoint records, and the rules every backend checks the same way.

- A completed record is one canonical JSON object (sorted keys, no spaces, so the same record
  always gives the same text): Redis' `streams:completed_files` values and `streams:completed_log`
  entries, SQLite's `completions.record` column.
- A stream record is the seed's `stream:{id}:meta` hash (every value a string) for Redis, and a
  row of typed columns for SQLite.

Decoding never guesses: a value that cannot be read back raises `CheckpointCorrupt` naming where it
was found and what it was, so a damaged store is reported instead of being silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from streamup.errors import CheckpointCorrupt, CheckpointError
from streamup.models import (
    CompletedRecord,
    EndReason,
    Extension,
    FileIdentity,
    Proof,
    Status,
    StreamRecord,
    iso,
    parse_iso,
)

T = TypeVar("T")

# Longest stored value quoted in an error message; a corrupt value can be arbitrarily large.
_QUOTE_LIMIT_CHARS = 200


def quote(value: object) -> str:
    """`repr(value)`, shortened so that an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT_CHARS else text[:_QUOTE_LIMIT_CHARS] + "..."


def check_finish(stream: StreamRecord, record: CompletedRecord) -> None:
    """Refuse a `finish_stream` whose two halves describe different streams: it would delete one
    stream's working state and file another's record."""
    if record.stream_id != stream.stream_id:
        raise CheckpointError(
            f"finish_stream: record of stream {record.stream_id} given for {stream.stream_id}"
        )


def missing_stream(stream_id: str) -> CheckpointError:
    """Progress written for a stream without a record would be orphaned, unreadable state."""
    return CheckpointError(
        f"stream {stream_id} has no checkpoint record (never saved, or already finished)"
    )


def parse_count(text: str) -> int:
    """A non-negative decimal integer, strictly: no sign, spaces or underscores."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError("not a non-negative integer")
    return int(text)


def parse_proof(text: str) -> Proof | None:
    """A part's stored proof: a Proof value, or empty for a part recorded before proofs were
    kept. ValueError for anything else."""
    return Proof(text) if text else None


# -- completed record <-> JSON ------------------------------------------------------------------


def completed_to_dict(record: CompletedRecord) -> dict[str, str | int]:
    """The record as a flat JSON-able dict (timestamps ISO-8601 UTC, enums as their strings)."""
    return {
        "stream_id": record.stream_id,
        "path": record.path,
        "bucket": record.bucket,
        "key": record.key,
        "status": record.status.value,
        "device": record.identity.device,
        "inode": record.identity.inode,
        "size_bytes": record.size_bytes,
        "mtime_ns": record.mtime_ns,
        "completed_at_utc": iso(record.completed_at),
        "end_reason": record.end_reason.value,
        **{name: getattr(record, attr) for name, (attr, _) in _COMPLETED_ADDED.items()},
    }


# Fields added to the completed record later, by JSON name: (attribute, type). Optional when
# read, so records written before them still load (with the dataclass defaults).
_COMPLETED_ADDED: dict[str, tuple[str, type]] = {
    "ctime_ns": ("ctime_ns", int),
    "sha256": ("sha256_hex", str),
    "object_etag": ("object_etag", str),
    "object_crc32c": ("object_crc32c", str),
    "integrity_proof": ("proof", str),
    "host": ("host", str),
    "local_action": ("local_action", str),
    "local_target": ("local_target", str),
    "extensions": ("extensions", int),
}


def completed_from_dict(data: object, *, where: str) -> CompletedRecord:
    """Inverse of `completed_to_dict`. `where` names the key / row for the error message."""
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{where}: completed record is not an object: {quote(data)}")
    try:
        return CompletedRecord(
            stream_id=_typed(data, "stream_id", str),
            path=_typed(data, "path", str),
            bucket=_typed(data, "bucket", str),
            key=_typed(data, "key", str),
            status=Status(_typed(data, "status", str)),
            identity=FileIdentity(_typed(data, "device", int), _typed(data, "inode", int)),
            size_bytes=_typed(data, "size_bytes", int),
            mtime_ns=_typed(data, "mtime_ns", int),
            completed_at=parse_iso(_typed(data, "completed_at_utc", str)),
            end_reason=EndReason(_typed(data, "end_reason", str)),
            **{
                attr: _typed(data, name, kind)
                for name, (attr, kind) in _COMPLETED_ADDED.items()
                if name in data
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorrupt(
            f"{where}: unreadable completed record ({exc}): {quote(data)}"
        ) from exc


def completed_to_json(record: CompletedRecord) -> str:
    return json.dumps(completed_to_dict(record), sort_keys=True, separators=(",", ":"))


def completed_from_json(text: str, *, where: str) -> CompletedRecord:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointCorrupt(f"{where}: completed record is not JSON: {quote(text)}") from exc
    return completed_from_dict(data, where=where)


def _typed(data: dict[str, Any], field: str, kind: type[T]) -> T:
    value = data[field]
    # bool is an int subclass, but a stored true/false is as wrong as a string for a size.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{field} is not a {kind.__name__}")
    return value


# -- stream record <-> the seed's meta hash -----------------------------------------------------

# Fields with a dataclass default may be absent (records written by the seed lack them).
_META_DEFAULTS = {
    "s3_upload_id": "",
    "size_bytes": "0",
    "mtime_ns": "0",
    "uploaded_bytes": "0",
    "reuploaded_parts": "0",
    "sha256": "",
    "completed_at_utc": "",
    "end_reason": EndReason.IDLE.value,
    "error": "",
    "host": "",
    "checksum_algorithm": "",
    "key_collision_of": "",
    "bytes_sent": "0",
    "rebuild": "",
    "extends": "",
}


def stream_to_meta(stream: StreamRecord) -> dict[str, str]:
    """The record as meta hash fields. None is stored as the empty string."""
    return {
        "original_path": stream.path,
        "relative_path": stream.relative_path,
        "s3_bucket": stream.bucket,
        "s3_key_prefix": stream.key,
        "s3_upload_id": stream.upload_id or "",
        "status": stream.status.value,
        "started_at_utc": iso(stream.started_at),
        "last_activity_at_utc": iso(stream.last_activity_at),
        "device": str(stream.identity.device),
        "inode": str(stream.identity.inode),
        "size_bytes": str(stream.size_bytes),
        "mtime_ns": str(stream.mtime_ns),
        "uploaded_bytes": str(stream.uploaded_bytes),
        "part_size_bytes": str(stream.part_size_bytes),
        "part_size_fixed": "1" if stream.part_size_fixed else "0",
        "reuploaded_parts": str(stream.reuploaded_parts),
        "sha256": stream.sha256_hex or "",
        "completed_at_utc": "" if stream.completed_at is None else iso(stream.completed_at),
        "end_reason": stream.end_reason.value,
        "error": stream.error or "",
        "host": stream.host,
        "checksum_algorithm": stream.checksum_algorithm,
        "key_collision_of": stream.key_collision_of,
        "bytes_sent": str(stream.bytes_sent),
        "rebuild": stream.rebuild,
        "extends": extension_to_text(stream.extends),
    }


def stream_from_meta(stream_id: str, fields: dict[str, str], *, where: str) -> StreamRecord:
    """Inverse of `stream_to_meta`; `where` (the key) goes into the CheckpointCorrupt message."""
    meta = _MetaReader(fields, where)
    completed_at = meta.text("completed_at_utc")
    return StreamRecord(
        stream_id=stream_id,
        path=meta.text("original_path"),
        relative_path=meta.text("relative_path"),
        bucket=meta.text("s3_bucket"),
        key=meta.text("s3_key_prefix"),
        status=meta.parse("status", Status),
        identity=FileIdentity(device=meta.count("device"), inode=meta.count("inode")),
        part_size_bytes=meta.count("part_size_bytes"),
        part_size_fixed=meta.parse("part_size_fixed", _flag),
        started_at=meta.parse("started_at_utc", parse_iso),
        last_activity_at=meta.parse("last_activity_at_utc", parse_iso),
        upload_id=meta.text("s3_upload_id") or None,
        size_bytes=meta.count("size_bytes"),
        mtime_ns=meta.count("mtime_ns"),
        uploaded_bytes=meta.count("uploaded_bytes"),
        reuploaded_parts=meta.count("reuploaded_parts"),
        sha256_hex=meta.text("sha256") or None,
        completed_at=meta.parse("completed_at_utc", parse_iso) if completed_at else None,
        end_reason=meta.parse("end_reason", EndReason),
        error=meta.text("error") or None,
        host=meta.text("host"),
        checksum_algorithm=meta.text("checksum_algorithm"),
        key_collision_of=meta.text("key_collision_of"),
        bytes_sent=meta.count("bytes_sent"),
        rebuild=meta.text("rebuild"),
        extends=meta.parse("extends", extension_from_text),
    )


def extension_to_text(extension: Extension | None) -> str:
    """An extension as one canonical JSON text ("" for none): a meta field, a SQLite column."""
    if extension is None:
        return ""
    fields = {"stream_id": extension.stream_id, "size_bytes": extension.size_bytes,
              "etag": extension.etag, "count": extension.count}  # fmt: skip
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def extension_from_text(text: str) -> Extension | None:
    """Inverse of `extension_to_text`; ValueError when it cannot be read."""
    if not text:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    try:
        return Extension(_typed(data, "stream_id", str), _typed(data, "size_bytes", int),
                         _typed(data, "etag", str), _typed(data, "count", int))  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise ValueError(f"unreadable extension ({exc})") from None


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("not 0 or 1")
    return text == "1"


class _MetaReader:
    """Reads meta fields, turning every missing or malformed one into CheckpointCorrupt."""

    def __init__(self, fields: dict[str, str], where: str) -> None:
        self.fields = fields
        self.where = where

    def text(self, name: str) -> str:
        value = self.fields.get(name, _META_DEFAULTS.get(name))
        if value is None:
            raise CheckpointCorrupt(f"{self.where}: field {name} is missing")
        return value

    def count(self, name: str) -> int:
        return self.parse(name, parse_count)

    def parse(self, name: str, convert: Callable[[str], T]) -> T:
        value = self.text(name)
        try:
            return convert(value)
        except ValueError as exc:
            raise CheckpointCorrupt(
                f"{self.where}: field {name} has an unreadable value {quote(value)} ({exc})"
            ) from exc


# -- stream record <-> SQLite row ---------------------------------------------------------------


# SQLite integers are signed 64-bit; some filesystems hand out device/inode numbers >= 2**63.
# Stored in two's complement they round-trip exactly (neither is ever negative).
def to_i64(number: int) -> int:
    return number - 2**64 if number >= 2**63 else number


def from_i64(number: int) -> int:
    return number + 2**64 if number < 0 else number


def stream_to_row(stream: StreamRecord) -> dict[str, object]:
    """Named parameters for the `streams` table (column names are the dataclass's). Like the
    meta hash, an empty optional string is stored as NULL, so every backend reads back None."""
    return {
        "stream_id": stream.stream_id,
        "path": stream.path,
        "relative_path": stream.relative_path,
        "bucket": stream.bucket,
        "key": stream.key,
        "status": stream.status.value,
        "device": to_i64(stream.identity.device),
        "inode": to_i64(stream.identity.inode),
        "part_size_bytes": stream.part_size_bytes,
        "part_size_fixed": int(stream.part_size_fixed),
        "started_at": iso(stream.started_at),
        "last_activity_at": iso(stream.last_activity_at),
        "upload_id": stream.upload_id or None,
        "size_bytes": stream.size_bytes,
        "mtime_ns": stream.mtime_ns,
        "uploaded_bytes": stream.uploaded_bytes,
        "reuploaded_parts": stream.reuploaded_parts,
        "sha256_hex": stream.sha256_hex or None,
        "completed_at": None if stream.completed_at is None else iso(stream.completed_at),
        "end_reason": stream.end_reason.value,
        "error": stream.error or None,
        "host": stream.host,
        "checksum_algorithm": stream.checksum_algorithm,
        "key_collision_of": stream.key_collision_of,
        "bytes_sent": stream.bytes_sent,
        "rebuild": stream.rebuild,
        "extends": extension_to_text(stream.extends),
    }


def stream_from_row(row: dict[str, Any], *, where: str) -> StreamRecord:
    """Inverse of `stream_to_row`."""
    try:
        completed_at = row["completed_at"]
        return StreamRecord(
            **{name: row[name] for name in _PLAIN_COLUMNS},
            status=Status(row["status"]),
            identity=FileIdentity(from_i64(row["device"]), from_i64(row["inode"])),
            part_size_fixed=bool(row["part_size_fixed"]),
            started_at=parse_iso(row["started_at"]),
            last_activity_at=parse_iso(row["last_activity_at"]),
            completed_at=None if completed_at is None else parse_iso(completed_at),
            end_reason=EndReason(row["end_reason"]),
            extends=extension_from_text(row["extends"] or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorrupt(f"{where}: unreadable stream row ({exc}): {quote(row)}") from exc


# Columns stored exactly as the dataclass holds them.
_PLAIN_COLUMNS = (
    "stream_id",
    "path",
    "relative_path",
    "bucket",
    "key",
    "part_size_bytes",
    "upload_id",
    "size_bytes",
    "mtime_ns",
    "uploaded_bytes",
    "reuploaded_parts",
    "sha256_hex",
    "error",
    "host",
    "checksum_algorithm",
    "key_collision_of",
    "bytes_sent",
    "rebuild",
)
