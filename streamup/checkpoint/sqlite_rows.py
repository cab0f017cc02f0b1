"""The SQLite store's rows: records written as rows and read back, and what a rebuild carries
over from a lost file (SqliteStore.replace_lost)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from streamup.checkpoint.codec import completed_to_dict, missing_stream, parse_proof, to_i64
from streamup.checkpoint.sqlite_schema import (
    CARRIED_TABLES,
    COMPLETED_COLUMNS,
    COMPLETED_VALUES,
    copy_rows,
)
from streamup.errors import CheckpointCorrupt
from streamup.models import CompletedRecord, PartRecord, iso, parse_iso


def completed_row(record: CompletedRecord) -> dict[str, str | int]:
    row = completed_to_dict(record)
    row["device"] = to_i64(record.identity.device)
    row["inode"] = to_i64(record.identity.inode)
    return row


def finished_in(old: sqlite3.Connection) -> set[str]:
    """The streams a lost file shows finished: a completed-file record, and no stream row."""
    try:
        rows = old.execute(
            "SELECT stream_id FROM completed_files"
            " WHERE stream_id NOT IN (SELECT stream_id FROM streams)"
        ).fetchall()
    except sqlite3.Error:
        return set()  # unreadable: memory is all there is
    return {row[0] for row in rows}


def _everything(_row: sqlite3.Row) -> bool:
    return True


def carry_over(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    ours: set[str],
    keep_completed: Callable[[str], bool],
) -> None:
    """Copy what a lost file holds beyond the agent's memory (replace_lost); a completed-file
    record only where `keep_completed(path)`."""
    keep = {
        "completed_files": lambda row: keep_completed(row["path"]),
        "streams": lambda row: row["stream_id"] not in ours,
        "parts": lambda row: row["stream_id"] not in ours,
    }
    try:
        for table in CARRIED_TABLES:
            copy_rows(old, new, table, keep.get(table, _everything))
    except sqlite3.Error:
        pass  # what could be read went in; the rest is the agent's memory, as before


def insert_completed(conn: sqlite3.Connection, records: Sequence[CompletedRecord]) -> int:
    """Each record unless its path has one: how many were written."""
    sql = f"INSERT OR IGNORE INTO completed_files ({COMPLETED_COLUMNS}) VALUES ({COMPLETED_VALUES})"
    return sum(conn.execute(sql, completed_row(record)).rowcount for record in records)


def insert_part(conn: sqlite3.Connection, stream_id: str, part: PartRecord) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO parts (stream_id, number, offset_bytes, size_bytes, etag,"
        " md5_hex, uploaded_at, crc32c_hex, copied, proof) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            stream_id, part.number, part.offset_bytes, part.size_bytes, part.etag,
            part.md5_hex, iso(part.uploaded_at), part.crc32c_hex, int(part.copied),
            part.proof or "",
        ),
    )  # fmt: skip


def update_progress(
    conn: sqlite3.Connection, stream_id: str, uploaded_bytes: int, last_activity_iso: str | None
) -> None:
    cursor = conn.execute(
        "UPDATE streams SET uploaded_bytes = ?,"
        " last_activity_at = COALESCE(?, last_activity_at) WHERE stream_id = ?",
        (uploaded_bytes, last_activity_iso, stream_id),
    )
    if cursor.rowcount == 0:
        raise missing_stream(stream_id)


def part_from_row(stream_id: str, row: sqlite3.Row) -> PartRecord:
    where = f"in table parts for stream {stream_id!r}, part {row['number']}"
    try:
        uploaded_at = parse_iso(row["uploaded_at"])
    except (TypeError, ValueError) as exc:
        raise CheckpointCorrupt(f"unreadable uploaded_at {row['uploaded_at']!r} {where}") from exc
    try:
        proof = parse_proof(row["proof"])
    except ValueError as exc:
        raise CheckpointCorrupt(f"unknown proof {row['proof']!r} {where}") from exc
    return PartRecord(
        number=row["number"],
        offset_bytes=row["offset_bytes"],
        size_bytes=row["size_bytes"],
        etag=row["etag"],
        md5_hex=row["md5_hex"],
        uploaded_at=uploaded_at,
        crc32c_hex=row["crc32c_hex"],
        copied=bool(row["copied"]),
        proof=proof,
    )
