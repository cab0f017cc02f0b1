"""Pure (de)serialisation of the event outbox, shared by every backend.

An event is one canonical JSON object (sorted keys, no spaces): Redis' `streams:outbox` values,
the memory store's entries. A sink's delivery state is a small JSON object too. SQLite keeps the
same fields in columns. Like `codec`, decoding never guesses: an unreadable value raises
`CheckpointCorrupt` naming where it was found.
"""

from __future__ import annotations

import json
from typing import Any

from streamup.checkpoint.codec import quote
from streamup.errors import CheckpointCorrupt, CheckpointError
from streamup.models import DeliveryState, DeliveryStatus, OutboxEvent, StreamRecord, iso, parse_iso

# A sink's last error is kept for `status`; an HTML error page must not bloat the store.
LAST_ERROR_LIMIT_CHARS = 500


def check_event(stream: StreamRecord, event: OutboxEvent | None) -> None:
    """Refuse a finish that would file one stream's event under another stream."""
    if event is not None and event.stream_id != stream.stream_id:
        raise CheckpointError(
            f"finish_stream: event of stream {event.stream_id} given for {stream.stream_id}"
        )


def check_forget_event(stream_id: str | None, event: OutboxEvent | None) -> None:
    """An event goes with forgetting a file only under compare-and-set on its own stream."""
    if event is not None and event.stream_id != stream_id:
        raise CheckpointError(
            f"forget_completed_file: event of stream {event.stream_id} given for {stream_id}"
        )


def event_to_dict(event: OutboxEvent) -> dict[str, str]:
    return {
        "event_id": event.event_id,
        "type": event.event_type,
        "stream_id": event.stream_id,
        "host": event.host,
        "created_at_utc": iso(event.created_at),
        "body": event.body,
    }


def event_to_json(event: OutboxEvent) -> str:
    return json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"))


def event_from_dict(data: object, *, where: str) -> OutboxEvent:
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{where}: outbox event is not an object: {quote(data)}")
    try:
        return OutboxEvent(
            event_id=_text(data, "event_id"),
            event_type=_text(data, "type"),
            stream_id=_text(data, "stream_id"),
            host=_text(data, "host"),
            created_at=parse_iso(_text(data, "created_at_utc")),
            body=_text(data, "body"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorrupt(f"{where}: unreadable outbox event ({exc}): {quote(data)}") from exc


def event_from_json(text: str, *, where: str) -> OutboxEvent:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointCorrupt(f"{where}: outbox event is not JSON: {quote(text)}") from exc
    return event_from_dict(data, where=where)


def state_to_json(state: DeliveryState) -> str:
    return json.dumps(
        {
            "status": state.status.value,
            "attempts": state.attempts,
            "last_error": clip_error(state.last_error),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def state_from_json(text: str, *, where: str) -> DeliveryState:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        attempts = data["attempts"]
        last_error = data.get("last_error")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise TypeError("attempts is not a count")
        if last_error is not None and not isinstance(last_error, str):
            raise TypeError("last_error is not text")
        return DeliveryState(DeliveryStatus(data["status"]), attempts, last_error)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorrupt(
            f"{where}: unreadable delivery state ({exc}): {quote(text)}"
        ) from exc


def clip_error(text: str | None) -> str | None:
    if text is None or len(text) <= LAST_ERROR_LIMIT_CHARS:
        return text
    return text[:LAST_ERROR_LIMIT_CHARS] + "..."


def _text(data: dict[str, Any], field: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise TypeError(f"{field} is not text")
    return value
