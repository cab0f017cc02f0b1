"""What `streamup status` and `/status` show: one row per stream, recent completions below.

Rows hold paths, sizes, states and errors; never a credential.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamup.checkpoint import CheckpointStore
from streamup.models import CompletedRecord, StreamRecord, iso

if TYPE_CHECKING:
    from streamup.stream import StreamWorker


def stream_row(
    record: StreamRecord, parts: int, *, stalled: bool = False, error: str | None = None
) -> dict[str, object]:
    return {
        "stream_id": record.stream_id,
        "path": record.path,
        "state": record.status.value,
        "stalled": stalled,
        "uploaded_bytes": record.uploaded_bytes,
        "size_bytes": record.size_bytes,
        "lag_bytes": max(0, record.size_bytes - record.uploaded_bytes),
        "parts": parts,
        "key": record.key,
        "last_activity_at_utc": iso(record.last_activity_at),
        "error": error or record.error,
    }


def live_streams(workers: Iterable[StreamWorker]) -> list[dict[str, object]]:
    return [
        stream_row(w.record, len(w.parts), stalled=w.stalled, error=w.last_error) for w in workers
    ]


def recent(records: Iterable[CompletedRecord]) -> list[dict[str, object]]:
    return [
        {
            "stream_id": r.stream_id,
            "path": r.path,
            "state": r.status.value,
            "size_bytes": r.size_bytes,
            "key": r.key,
            "completed_at_utc": iso(r.completed_at),
            "end_reason": r.end_reason.value,
        }
        for r in records
    ]


async def collect(store: CheckpointStore, *, recent_limit: int = 20) -> dict[str, object]:
    """The status document read straight from the checkpoint store (agent running or not)."""
    rows = []
    for record in await store.unfinished_streams():
        parts = await store.load_parts(record.stream_id)
        rows.append(stream_row(record, len(parts)))
    return {
        "streams": rows,
        "recent_completions": recent(await store.recent_completions(recent_limit)),
    }


def _size(n: object) -> str:
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
    if not streams:
        lines.append("no streams in progress")
    for row in streams:
        state = row["state"] + (" (stalled)" if row.get("stalled") else "")
        lines.append(
            f"{state:<28} {_size(row['uploaded_bytes']):>10} / {_size(row['size_bytes']):<10} "
            f"{row['parts']:>5} parts  {row['last_activity_at_utc']}  {row['path']}"
        )
        if row.get("error"):
            lines.append(f"    error: {row['error']}")
    completions = doc.get("recent_completions") or []
    assert isinstance(completions, list)
    if completions:
        lines.append("")
        lines.append("recent completions:")
        for row in completions:
            lines.append(
                f"{row['state']:<28} {_size(row['size_bytes']):>10}  {row['completed_at_utc']}  "
                f"{row['path']} -> {row['key']}"
            )
    return "\n".join(lines)
