"""The SQLite checkpoint store's schema, its migrations and its transactions.

`prepare` runs at every open, in one transaction: it creates what is missing and migrates an older
database in place. Columns added later (`streams.host`) are added when missing, and tables added
later (the event outbox: `outbox`, `deliveries`) are created when missing, without a schema
version bump: an older agent still reads and writes a database that has them (it never names
them), so going back a version stays possible. `user_version` only changes for changes an older
agent could not live with.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from streamup.errors import CheckpointError
from streamup.models import Status

T = TypeVar("T")

SCHEMA_VERSION = 1
_COMPLETED_TEXT_ADDED = (
    "sha256", "object_etag", "object_crc32c", "integrity_proof", "host", "local_action",
    "local_target",
)  # fmt: skip
# Columns added since schema 1 (also in the CREATE TABLEs), per table, with their declaration.
_ADDED_COLUMNS = {
    "streams": {
        "host": "TEXT NOT NULL DEFAULT ''",
        "checksum_algorithm": "TEXT NOT NULL DEFAULT ''",
        "key_collision_of": "TEXT NOT NULL DEFAULT ''",
        "bytes_sent": "INTEGER NOT NULL DEFAULT 0",
        "rebuild": "TEXT NOT NULL DEFAULT ''",
        "extends": "TEXT NOT NULL DEFAULT ''",
    },
    "parts": {
        "crc32c_hex": "TEXT NOT NULL DEFAULT ''",
        "copied": "INTEGER NOT NULL DEFAULT 0",
        "proof": "TEXT NOT NULL DEFAULT ''",
    },
    "completed_files": {
        "ctime_ns": "INTEGER NOT NULL DEFAULT 0",
        "extensions": "INTEGER NOT NULL DEFAULT 0",
        **dict.fromkeys(_COMPLETED_TEXT_ADDED, "TEXT NOT NULL DEFAULT ''"),
    },
}
FINAL = tuple(s.value for s in Status if s.is_final)

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY, path TEXT NOT NULL, relative_path TEXT NOT NULL,
    bucket TEXT NOT NULL, "key" TEXT NOT NULL, status TEXT NOT NULL,
    device INTEGER NOT NULL, inode INTEGER NOT NULL,
    part_size_bytes INTEGER NOT NULL, part_size_fixed INTEGER NOT NULL,
    started_at TEXT NOT NULL, last_activity_at TEXT NOT NULL, upload_id TEXT,
    size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, uploaded_bytes INTEGER NOT NULL,
    reuploaded_parts INTEGER NOT NULL, sha256_hex TEXT, completed_at TEXT,
    end_reason TEXT NOT NULL, error TEXT, host TEXT NOT NULL DEFAULT '',
    checksum_algorithm TEXT NOT NULL DEFAULT '', key_collision_of TEXT NOT NULL DEFAULT '',
    bytes_sent INTEGER NOT NULL DEFAULT 0, rebuild TEXT NOT NULL DEFAULT '',
    extends TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS streams_by_path ON streams (path);
CREATE TABLE IF NOT EXISTS parts (
    stream_id TEXT NOT NULL, number INTEGER NOT NULL, offset_bytes INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL, etag TEXT NOT NULL, md5_hex TEXT NOT NULL,
    uploaded_at TEXT NOT NULL, crc32c_hex TEXT NOT NULL DEFAULT '',
    copied INTEGER NOT NULL DEFAULT 0, proof TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stream_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS completed_files (
    path TEXT PRIMARY KEY, stream_id TEXT NOT NULL, bucket TEXT NOT NULL, "key" TEXT NOT NULL,
    status TEXT NOT NULL, device INTEGER NOT NULL, inode INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, completed_at_utc TEXT NOT NULL,
    end_reason TEXT NOT NULL, ctime_ns INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL DEFAULT '', object_etag TEXT NOT NULL DEFAULT '',
    object_crc32c TEXT NOT NULL DEFAULT '', integrity_proof TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '', local_action TEXT NOT NULL DEFAULT '',
    local_target TEXT NOT NULL DEFAULT '', extensions INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, stream_id TEXT NOT NULL UNIQUE, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL, type TEXT NOT NULL, host TEXT NOT NULL, created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL, sink TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT,
    PRIMARY KEY (event_id, sink)
) WITHOUT ROWID;
"""
STREAM_COLUMNS = (
    'stream_id, path, relative_path, bucket, "key", status, device, inode, part_size_bytes,'
    " part_size_fixed, started_at, last_activity_at, upload_id, size_bytes, mtime_ns,"
    " uploaded_bytes, reuploaded_parts, sha256_hex, completed_at, end_reason, error, host,"
    " checksum_algorithm, key_collision_of, bytes_sent, rebuild, extends"
)
STREAM_VALUES = ", ".join(":" + n.strip().strip('"') for n in STREAM_COLUMNS.split(","))
COMPLETED_COLUMNS = (
    'path, stream_id, bucket, "key", status, device, inode, size_bytes, mtime_ns,'
    " completed_at_utc, end_reason, ctime_ns, sha256, object_etag, object_crc32c,"
    " integrity_proof, host, local_action, local_target, extensions"
)
COMPLETED_VALUES = ", ".join(":" + n.strip().strip('"') for n in COMPLETED_COLUMNS.split(","))

INSERT_STREAM = f"INSERT OR REPLACE INTO streams ({STREAM_COLUMNS}) VALUES ({STREAM_VALUES})"
# claim_stream. Parameters: path, inode, the final statuses, the claiming stream's id (first).
UNFINISHED_OF_FILE = (
    "SELECT stream_id FROM streams WHERE path = ? AND inode = ?"
    f" AND status NOT IN ({', '.join('?' * len(FINAL))})"
    " ORDER BY stream_id = ? DESC, started_at LIMIT 1"
)
# Parameters: path, inode, size_bytes, mtime_ns.
COMPLETED_OF_FILE = (
    "SELECT stream_id FROM completed_files"
    " WHERE path = ? AND inode = ? AND size_bytes = ? AND mtime_ns = ?"
)


def prepare(conn: sqlite3.Connection) -> None:
    """Set the connection up, then create or migrate the schema (see the module docstring)."""
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"the checkpoint database was written by a newer streamup (schema {version}, this"
            f" one reads {SCHEMA_VERSION}); upgrade streamup or use another STATE_DIR"
        )

    def create(conn: sqlite3.Connection) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        _add_missing_columns(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    transaction(conn, create)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    # CREATE TABLE IF NOT EXISTS leaves an older table as it was.
    for table, columns in _ADDED_COLUMNS.items():
        present = {info["name"] for info in conn.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


# The tables a lost database file is read back from (rebuilt: SqliteStore.replace_lost), in an
# order that keeps every row's references: the streams before their parts, events before their
# deliveries.
CARRIED_TABLES = ("completed_files", "completions", "outbox", "deliveries", "streams", "parts")


def copy_rows(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    table: str,
    keep: Callable[[sqlite3.Row], bool],
) -> None:
    """Copy the rows of `table` that `keep` keeps from `old` into `new`, where `new` has none
    with the same key yet (what `new` already holds wins)."""
    rows = [row for row in old.execute(f"SELECT * FROM {table}") if keep(row)]
    if rows:
        names = rows[0].keys()
        columns = ", ".join(f'"{name}"' for name in names)
        marks = ", ".join("?" * len(names))
        new.executemany(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", rows)


def transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run `work` in one write transaction; roll back on any exception."""
    # IMMEDIATE takes the write lock up front, so a transaction never fails halfway on a lock.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
