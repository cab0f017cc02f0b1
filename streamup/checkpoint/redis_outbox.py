"""The Redis store's event outbox: its keys, its scripts and how it is read back.

Keys, next to the seed's (see `redis.py`):
- `streams:outbox` (hash): event id -> the event record JSON (`outbox_codec.event_to_json`).
- `streams:outbox_queue` (sorted set): event ids, scored by `INCR streams:outbox_seq` when the
  event was written: the order events go out in, per stream.
- `event:{id}:deliveries` (hash): sink -> that sink's delivery state JSON.
- `streams:events` (stream): every event once (id, type, stream_id, event = the JSON sent),
  trimmed to about the history limit, for consumers that read Redis with consumer groups.

An event is written by `FINISH_SCRIPT` (redis_leases.py) in the script that finishes its stream,
or (`file.deleted`, `file.moved`) by `redis.py`'s script that forgets the file's completed record.
"""

from __future__ import annotations

from streamup.checkpoint.outbox_codec import event_from_json, state_from_json
from streamup.models import OutboxEntry

OUTBOX = "streams:outbox"
OUTBOX_QUEUE = "streams:outbox_queue"
OUTBOX_SEQ = "streams:outbox_seq"
EVENTS = "streams:events"
# KEYS[12..15] of FINISH_SCRIPT, KEYS[2..5] of the forget script.
FINISH_KEYS = (OUTBOX, OUTBOX_QUEUE, OUTBOX_SEQ, EVENTS)


def deliveries_key(event_id: str) -> str:
    return f"event:{event_id}:deliveries"


# KEYS: outbox, the event's deliveries. ARGV: event id, sink, state JSON. An event that left
# the outbox meanwhile gets no orphan state.
SET_DELIVERY_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


def build_entries(
    queue: list[tuple[str, float]], records: list[str | None], states: list[dict[str, str]]
) -> list[OutboxEntry]:
    """OutboxEntry values from the queue (id, seq), the records and the states read for it.

    A record that is gone (None) was removed between the reads: delivered, nothing to do.
    """
    entries = []
    for (event_id, seq), record, sinks in zip(queue, records, states, strict=True):
        if record is None:
            continue
        where = f"{OUTBOX} field {event_id!r}"
        event = event_from_json(record, where=where)
        deliveries = {
            sink: state_from_json(text, where=f"{deliveries_key(event_id)} field {sink!r}")
            for sink, text in sinks.items()
        }
        entries.append(OutboxEntry(int(seq), event, deliveries))
    return entries
