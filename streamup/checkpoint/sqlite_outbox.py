"""The SQLite store's event outbox: its statements and rows, run on the store's one thread.

Tables (created by `sqlite_schema.prepare`): `outbox` (one row per event, `seq` the order written)
and `deliveries` (one row per event and sink that has tried it). Each function runs inside the
store's transaction or read; `read_outbox` takes one snapshot of both tables.
"""

from __future__ import annotations

import sqlite3

from streamup.checkpoint.outbox_codec import clip_error
from streamup.errors import CheckpointCorrupt
from streamup.models import DeliveryState, DeliveryStatus, OutboxEntry, OutboxEvent, iso, parse_iso

# A retried finish keeps the event first written, and its place in the order.
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO outbox (event_id, stream_id, type, host, created_at, body)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# An event that left the outbox meanwhile gets no orphan delivery row.
_UPSERT_DELIVERY = (
    "INSERT OR REPLACE INTO deliveries (event_id, sink, status, attempts, last_error)"
    " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM outbox WHERE event_id = ?)"
)


def insert_event(conn: sqlite3.Connection, event: OutboxEvent) -> None:
    row = (event.event_id, event.stream_id, event.event_type, event.host)
    conn.execute(_INSERT_EVENT, (*row, iso(event.created_at), event.body))


def upsert_delivery(
    conn: sqlite3.Connection, event_id: str, sink: str, state: DeliveryState
) -> None:
    row = (event_id, sink, state.status.value, state.attempts, clip_error(state.last_error))
    conn.execute(_UPSERT_DELIVERY, (*row, event_id))


def delete_event(conn: sqlite3.Connection, event_id: str) -> None:
    conn.execute("DELETE FROM deliveries WHERE event_id = ?", (event_id,))
    conn.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))


def read_outbox(conn: sqlite3.Connection, *, where: str) -> list[OutboxEntry]:
    """Every event, oldest first, with its delivery states; `where` names the database."""
    # One read transaction: no delivery row is seen without its event, nor the reverse.
    conn.execute("BEGIN")
    try:
        events = conn.execute(
            "SELECT seq, event_id, stream_id, type, host, created_at, body FROM outbox ORDER BY seq"
        ).fetchall()
        states = conn.execute(
            "SELECT event_id, sink, status, attempts, last_error FROM deliveries"
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    by_event: dict[str, dict[str, DeliveryState]] = {}
    for row in states:
        at = f"{where} deliveries[{row['event_id']!r}, {row['sink']!r}]"
        by_event.setdefault(row["event_id"], {})[row["sink"]] = _state(row, at)
    return [
        OutboxEntry(row["seq"], _event(row, where), by_event.get(row["event_id"], {}))
        for row in events
    ]


def _event(row: sqlite3.Row, where: str) -> OutboxEvent:
    try:
        created_at = parse_iso(row["created_at"])
    except (TypeError, ValueError) as exc:
        raise CheckpointCorrupt(
            f"{where} outbox[{row['event_id']!r}]: unreadable created_at {row['created_at']!r}"
        ) from exc
    return OutboxEvent(
        row["event_id"], row["type"], row["stream_id"], row["host"], created_at, row["body"]
    )


def _state(row: sqlite3.Row, where: str) -> DeliveryState:
    try:
        status = DeliveryStatus(row["status"])
    except ValueError as exc:
        raise CheckpointCorrupt(f"{where}: unknown delivery status {row['status']!r}") from exc
    return DeliveryState(status, row["attempts"], row["last_error"])
