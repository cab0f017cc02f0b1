"""What `streamup status` and `/status` show: one row per stream, recent completions below.

Both documents are built here so they have one shape. `streamup status --json` reads the
checkpoint store (agent running or not); `/status` reads the running agent's workers, which also
know what the store cannot: whether a stream is stalled right now (`stalled` is null offline).
`owner` is the agent id holding the stream's lease: the store knows it with Redis (a fleet);
the embedded SQLite store has one agent and keeps no lease a reader could see (null offline).
`events` is the outbox: how many events wait for a sink, how many a sink refused for good
(undeliverable), and the first of them with each sink's attempts and last error.
Rows hold paths, sizes, states and errors; never a credential.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from streamup.checkpoint import CheckpointStore
from streamup.errors import StreamupError
from streamup.files.disk import disk_usage
from streamup.files.source import stat_path
from streamup.models import (
    AgentSnapshot,
    CompletedRecord,
    DeliveryStatus,
    OutboxEntry,
    StreamRecord,
    StreamView,
    iso,
    utc_now,
)

RECENT_LIMIT = 20
# /status must answer while the store is down (that is when an operator looks), so a slow store
# costs at most this long and shows up as `store_error` instead of a hung request.
STORE_TIMEOUT_S = 2.0


def stream_row(
    record: StreamRecord,
    parts: int,
    *,
    size_bytes: int | None = None,
    stalled: bool | None = None,
    error: str | None = None,
    owner: str | None = None,
) -> dict[str, object]:
    """One stream: where it is, how much of the file S3 holds, and what went wrong if anything."""
    size = record.size_bytes if size_bytes is None else size_bytes
    return {
        "stream_id": record.stream_id,
        "path": record.path,
        "state": record.status.value,
        "stalled": stalled,
        "owner": owner,
        "uploaded_bytes": record.uploaded_bytes,
        "size_bytes": size,
        "lag_bytes": max(0, size - record.uploaded_bytes),
        "parts": parts,
        "key": record.key,
        "last_activity_at_utc": iso(record.last_activity_at),
        "error": error or record.error,
    }


def completion_row(record: CompletedRecord) -> dict[str, object]:
    return {
        "stream_id": record.stream_id,
        "path": record.path,
        "state": record.status.value,
        "size_bytes": record.size_bytes,
        "bucket": record.bucket,
        "key": record.key,
        "completed_at_utc": iso(record.completed_at),
        "end_reason": record.end_reason.value,
    }


def _undeliverable(entry: OutboxEntry) -> bool:
    return any(s.status is DeliveryStatus.UNDELIVERABLE for s in entry.deliveries.values())


def event_row(entry: OutboxEntry) -> dict[str, object]:
    """One event in the outbox, with where it stands with each sink that has tried it."""
    try:
        key = json.loads(entry.event.body).get("key")
    except (ValueError, AttributeError):
        key = None
    errors = [s.last_error for s in entry.deliveries.values() if s.last_error]
    return {
        "event_id": entry.event.event_id,
        "type": entry.event.event_type,
        "stream_id": entry.event.stream_id,
        "key": key,
        "host": entry.event.host,
        "created_at_utc": iso(entry.event.created_at),
        "state": "undeliverable" if _undeliverable(entry) else "waiting",
        "attempts": sum(s.attempts for s in entry.deliveries.values()),
        "last_error": errors[0] if errors else None,
        "sinks": {
            name: {"state": s.status.value, "attempts": s.attempts, "last_error": s.last_error}
            for name, s in sorted(entry.deliveries.items())
        },
    }


def events_section(
    entries: Iterable[OutboxEntry], *, limit: int = RECENT_LIMIT
) -> dict[str, object]:
    """The outbox: counts, then up to `limit` events, undeliverable ones first, oldest first."""
    listed = sorted(entries, key=lambda e: (not _undeliverable(e), e.seq))
    undeliverable = sum(1 for e in listed if _undeliverable(e))
    return {
        "waiting": len(listed) - undeliverable,
        "undeliverable": undeliverable,
        "events": [event_row(e) for e in listed[:limit]],
    }


def document(
    *,
    source: str,
    store: str,
    streams: list[dict[str, object]],
    completions: Iterable[CompletedRecord],
    agent_id: str | None = None,
    store_error: str | None = None,
    integrity: dict[str, object] | None = None,
    disk: dict[str, object] | None = None,
    events: Iterable[OutboxEntry] = (),
    bandwidth: dict[str, object] | None = None,
) -> dict[str, object]:
    """The one status shape, whoever builds it. `integrity` (how the S3 endpoint proves each
    part) is known only to a running agent: null offline. `disk`: WATCH_DIR's free space, the
    local bytes not yet in S3 and the files the local-file action keeps (offline: the first two)."""
    return {
        "free_disk_bytes": None if disk is None else disk.get("free_bytes"),
        "disk": disk,
        "source": source,  # "agent" (/status) or "checkpoint_store" (streamup status)
        "store": store,
        "agent_id": agent_id,
        "integrity": integrity,
        "bandwidth": bandwidth,  # BANDWIDTH_LIMIT now and its next change (s3.bandwidth)
        "generated_at_utc": iso(utc_now()),
        "store_error": store_error,
        "streams": streams,
        "recent_completions": [completion_row(r) for r in completions],
        "events": events_section(events),
    }


def live_streams(views: Iterable[StreamView], owner: str) -> list[dict[str, object]]:
    """Rows of the streams an agent is working on; it holds the lease of each (`owner`)."""
    return [
        stream_row(v.record, v.parts, stalled=v.stalled, error=v.error, owner=owner) for v in views
    ]


async def agent_document(snapshot: AgentSnapshot, store: CheckpointStore) -> dict[str, object]:
    """/status: the agent's own view, answered even when the checkpoint store is not."""
    streams = live_streams(snapshot.streams, snapshot.agent_id)
    completions: list[CompletedRecord] = []
    events: list[OutboxEntry] = []
    store_error = None
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            completions = await store.recent_completions(RECENT_LIMIT)
            events = await store.outbox()
    except StreamupError as exc:  # store errors are scrubbed of credentials where raised
        store_error = str(exc)
    except TimeoutError:
        store_error = f"the checkpoint store did not answer within {STORE_TIMEOUT_S:g} s"
    return document(
        source="agent",
        store=snapshot.store_name,
        agent_id=snapshot.agent_id,
        integrity=snapshot.integrity,
        disk=snapshot.disk,
        bandwidth=snapshot.bandwidth,
        streams=streams,
        completions=completions,
        store_error=store_error,
        events=events,
    )


def _size_on_disk(record: StreamRecord) -> int:
    # The store's size is only as fresh as the last status change; the file itself is the truth
    # when it is still the stream's file (same inode) and visible from this host.
    state = stat_path(record.path)
    if state is not None and state.identity == record.identity:
        return state.size_bytes
    return record.size_bytes


async def collect(
    store: CheckpointStore, *, recent_limit: int = RECENT_LIMIT, watch_dir: str | None = None
) -> dict[str, object]:
    """`streamup status`: the document read straight from the checkpoint store (and the free
    space of `watch_dir`'s filesystem)."""
    rows = []
    for record in await store.unfinished_streams():
        parts = await store.load_parts(record.stream_id)
        owner = await store.lease_owner(record.stream_id)
        rows.append(stream_row(record, len(parts), size_bytes=_size_on_disk(record), owner=owner))
    completions = await store.recent_completions(recent_limit)
    return document(
        source="checkpoint_store",
        store=store.name,
        streams=rows,
        completions=completions,
        events=await store.outbox(),
        disk=None if watch_dir is None else offline_disk(watch_dir, rows),
    )


def offline_disk(watch_dir: str, rows: list[dict[str, object]]) -> dict[str, object]:
    usage = disk_usage(watch_dir)
    lag = sum(int(r["lag_bytes"]) for r in rows if isinstance(r["lag_bytes"], int))
    return {
        "free_bytes": None if usage is None else usage.free_bytes,
        "total_bytes": None if usage is None else usage.total_bytes,
        "local_bytes_not_in_s3": lag,
    }


def empty_document(store: str, watch_dir: str | None = None) -> dict[str, object]:
    """No checkpoint store exists yet (no agent ever ran here): nothing to show but the disk."""
    disk = None if watch_dir is None else offline_disk(watch_dir, [])
    return document(source="checkpoint_store", store=store, streams=[], completions=[], disk=disk)


def human_size(n: object) -> str:
    value = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def render(doc: dict[str, object]) -> str:
    """A plain-text table for terminals."""
    lines = []
    streams = doc.get("streams") or []
    assert isinstance(streams, list)
    if doc.get("store_error"):
        lines.append(f"checkpoint store: {doc['store_error']}")
    disk = doc.get("disk")
    if isinstance(disk, dict) and disk.get("free_bytes") is not None:
        lines.append(
            f"disk: {human_size(disk['free_bytes'])} free, "
            f"{human_size(disk.get('local_bytes_not_in_s3'))} local not yet in S3"
            + (f" -- {disk['short']}" if disk.get("short") else "")
        )
    lines += _render_bandwidth(doc.get("bandwidth"))
    if not streams:
        lines.append("no streams in progress")
    else:
        lines.append(
            f"{'state':<28} {'uploaded':>10} / {'size':<10} {'lag':>10} {'parts':>5}  "
            f"{'last activity (UTC)':<32} path"
        )
    for row in streams:
        state = row["state"] + (" (stalled)" if row.get("stalled") else "")
        lines.append(
            f"{state:<28} {human_size(row['uploaded_bytes']):>10} / "
            f"{human_size(row['size_bytes']):<10} {human_size(row['lag_bytes']):>10} "
            f"{row['parts']:>5}  {row['last_activity_at_utc']:<32} {row['path']}"
        )
        if row.get("owner"):
            lines.append(f"    owner: {row['owner']}")
        if row.get("error"):
            lines.append(f"    error: {row['error']}")
    lines += _render_events(doc.get("events"))
    completions = doc.get("recent_completions") or []
    assert isinstance(completions, list)
    if completions:
        lines.append("")
        lines.append("recent completions:")
        for row in completions:
            lines.append(
                f"{row['state']:<28} {human_size(row['size_bytes']):>10}  "
                f"{row['completed_at_utc']}  {row['path']} -> {row['key']}"
            )
    return "\n".join(lines)


def _render_bandwidth(section: object) -> list[str]:
    if not isinstance(section, dict):
        return []
    line = f"bandwidth limit: {section['limit']}"
    if section.get("next_change_at"):
        line += f" (then {section['next_limit']} from {section['next_change_at']})"
    return [line]


def _render_events(section: object) -> list[str]:
    if not isinstance(section, dict) or not (section["waiting"] or section["undeliverable"]):
        return []
    lines = ["", f"events: {section['waiting']} waiting, {section['undeliverable']} undeliverable"]
    for row in section["events"]:
        lines.append(f"{row['state']:<14} {row['type']:<18} {row['event_id']}  {row['key']}")
        for name, sink in row["sinks"].items():
            error = f", last error: {sink['last_error']}" if sink["last_error"] else ""
            lines.append(f"    {name}: {sink['state']}, {sink['attempts']} attempts{error}")
    return lines
