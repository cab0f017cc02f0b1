"""An in-memory checkpoint store: a real implementation of the Protocol, for fast tests.

It keeps exactly the semantics of the durable backends (the contract suite runs against all of
them): progress only for saved streams, finishing removes working state, recent completions are
unique per stream and trimmed to `history_limit`. Records are stored encoded, as Redis holds them,
so what reads back is normalised the same way (timestamps in UTC, empty strings as None). Data
lives as long as the object: closing and reopening the same instance stands in for a restart.
Leases follow the SQLite store's (one agent per store): always granted, never fenced.

`inject_error` makes the next calls fail, to test how callers retry.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from streamup.checkpoint.codec import (
    check_finish,
    completed_from_json,
    completed_to_json,
    missing_stream,
    stream_from_meta,
    stream_to_meta,
)
from streamup.checkpoint.outbox_codec import (
    check_event,
    check_forget_event,
    event_from_json,
    event_to_json,
    state_from_json,
    state_to_json,
)
from streamup.errors import CheckpointError
from streamup.models import (
    Claim,
    CompletedRecord,
    DeliveryState,
    OutboxEntry,
    OutboxEvent,
    PartRecord,
    StreamRecord,
    iso,
)


class MemoryStore:
    """Checkpoint state in plain dicts, records encoded as the Redis backend encodes them."""

    name = "memory"

    def __init__(self, *, history_limit: int = 1000) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, not {history_limit}")
        self.history_limit = history_limit
        self._streams: dict[str, dict[str, str]] = {}  # stream id -> meta fields
        self._parts: dict[str, dict[int, PartRecord]] = {}
        self._completed_files: dict[str, str] = {}  # path -> record JSON
        self._completions: list[tuple[str, str]] = []  # (stream id, record JSON), newest first
        self._errors: list[CheckpointError] = []
        self._lease_tokens = itertools.count(1)
        self._lease_owners: dict[str, str] = {}
        self._outbox: dict[str, tuple[int, str]] = {}  # event id -> (seq, event JSON)
        self._deliveries: dict[str, dict[str, str]] = {}  # event id -> sink -> state JSON
        self._outbox_seq = itertools.count(1)

    def inject_error(self, error: CheckpointError, *, count: int = 1) -> None:
        """Make the next `count` calls (of any method but open/close) raise `error`."""
        self._errors.extend([error] * count)

    def _check(self) -> None:
        if self._errors:
            raise self._errors.pop(0)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        self._check()

    async def save_stream(self, stream: StreamRecord) -> None:
        self._check()
        self._streams[stream.stream_id] = stream_to_meta(stream)

    async def record_part(
        self, stream_id: str, part: PartRecord, uploaded_bytes: int, last_activity_at: datetime
    ) -> None:
        self._check()
        meta = self._meta(stream_id)
        utc_part = dataclasses.replace(part, uploaded_at=part.uploaded_at.astimezone(UTC))
        self._parts.setdefault(stream_id, {})[part.number] = utc_part
        meta["uploaded_bytes"] = str(uploaded_bytes)
        meta["last_activity_at_utc"] = iso(last_activity_at)

    async def remove_parts(
        self, stream_id: str, numbers: Iterable[int], uploaded_bytes: int
    ) -> None:
        self._check()
        meta = self._meta(stream_id)
        parts = self._parts.get(stream_id, {})
        for number in numbers:
            parts.pop(number, None)
        meta["uploaded_bytes"] = str(uploaded_bytes)

    async def load_stream(self, stream_id: str) -> StreamRecord | None:
        self._check()
        meta = self._streams.get(stream_id)
        return None if meta is None else stream_from_meta(stream_id, meta, where=stream_id)

    async def load_parts(self, stream_id: str) -> dict[int, PartRecord]:
        self._check()
        return dict(sorted(self._parts.get(stream_id, {}).items()))

    async def unfinished_streams(self) -> list[StreamRecord]:
        self._check()
        streams = [stream_from_meta(sid, meta, where=sid) for sid, meta in self._streams.items()]
        unfinished = [s for s in streams if not s.status.is_final]
        return sorted(unfinished, key=lambda s: (s.started_at, s.stream_id))

    async def finish_stream(
        self, stream: StreamRecord, record: CompletedRecord, event: OutboxEvent | None = None
    ) -> None:
        self._check()
        check_finish(stream, record)
        check_event(stream, event)
        if event is not None and event.event_id not in self._outbox:
            self._outbox[event.event_id] = (next(self._outbox_seq), event_to_json(event))
        self._streams.pop(stream.stream_id, None)
        self._parts.pop(stream.stream_id, None)
        self._lease_owners.pop(stream.stream_id, None)
        entry = completed_to_json(record)
        self._completed_files[record.path] = entry
        # One entry per stream: finishing again (a retried call) moves it to the front.
        history = [(sid, text) for sid, text in self._completions if sid != record.stream_id]
        self._completions = [(record.stream_id, entry), *history][: self.history_limit]

    async def completed_files(self) -> dict[str, CompletedRecord]:
        self._check()
        return {
            path: completed_from_json(text, where=path)
            for path, text in self._completed_files.items()
        }

    async def forget_completed_file(
        self, path: str, stream_id: str | None = None, event: OutboxEvent | None = None
    ) -> None:
        self._check()
        check_forget_event(stream_id, event)
        if path not in self._completed_files:
            return
        if stream_id is None or self._completed_stream(path) == stream_id:
            self._completed_files.pop(path)
            if event is not None and event.event_id not in self._outbox:
                self._outbox[event.event_id] = (next(self._outbox_seq), event_to_json(event))

    async def completed_file(self, path: str) -> CompletedRecord | None:
        self._check()
        text = self._completed_files.get(path)
        return None if text is None else completed_from_json(text, where=path)

    async def update_completed_file(self, record: CompletedRecord) -> bool:
        self._check()
        if self._completed_stream(record.path) != record.stream_id:
            return False
        self._completed_files[record.path] = completed_to_json(record)
        return True

    async def restore_completed_files(self, records: Sequence[CompletedRecord]) -> int:
        self._check()
        missing = {r.path: r for r in records if r.path not in self._completed_files}
        for path, record in missing.items():
            self._completed_files[path] = completed_to_json(record)
        return len(missing)

    def _completed_stream(self, path: str) -> str | None:
        text = self._completed_files.get(path)
        return None if text is None else completed_from_json(text, where=path).stream_id

    async def recent_completions(self, limit: int) -> list[CompletedRecord]:
        self._check()
        entries = self._completions[: max(limit, 0)]
        return [completed_from_json(text, where=sid) for sid, text in entries]

    async def outbox(self) -> list[OutboxEntry]:
        self._check()
        entries = []
        for event_id, (seq, text) in sorted(self._outbox.items(), key=lambda item: item[1][0]):
            states = self._deliveries.get(event_id, {})
            entries.append(
                OutboxEntry(
                    seq,
                    event_from_json(text, where=event_id),
                    {sink: state_from_json(v, where=event_id) for sink, v in states.items()},
                )
            )
        return entries

    async def set_delivery(self, event_id: str, sink: str, state: DeliveryState) -> None:
        self._check()
        if event_id in self._outbox:
            self._deliveries.setdefault(event_id, {})[sink] = state_to_json(state)

    async def remove_event(self, event_id: str) -> None:
        self._check()
        self._outbox.pop(event_id, None)
        self._deliveries.pop(event_id, None)

    async def claim_stream(
        self, stream: StreamRecord, *, owner: str | None = None, ttl_s: float = 0.0
    ) -> tuple[Claim, str]:
        claim, stream_id = await self._claim(stream)
        if claim is Claim.NEW and owner is not None:
            self._lease_owners[stream_id] = owner  # one agent per store: always granted
        return claim, stream_id

    async def _claim(self, stream: StreamRecord) -> tuple[Claim, str]:
        self._check()
        streams = [stream_from_meta(sid, meta, where=sid) for sid, meta in self._streams.items()]
        covering = sorted(
            (other.stream_id != stream.stream_id, other.started_at, other.stream_id)
            for other in streams
            if other.path == stream.path
            and other.identity.inode == stream.identity.inode
            and not other.status.is_final
        )
        if covering:
            # Our own id sorts first: a retried claim finds the stream it registered.
            not_ours, _, found = covering[0]
            return (Claim.EXISTING if not_ours else Claim.NEW), found
        done = self._completed_files.get(stream.path)
        if done is not None:
            record = completed_from_json(done, where=stream.path)
            if (record.identity.inode, record.size_bytes, record.mtime_ns) == (
                stream.identity.inode,
                stream.size_bytes,
                stream.mtime_ns,
            ):
                return Claim.COMPLETED, record.stream_id
        self._streams[stream.stream_id] = stream_to_meta(stream)
        return Claim.NEW, stream.stream_id

    async def acquire_lease(self, stream_id: str, owner: str, ttl_s: float) -> int | None:
        self._check()
        self._lease_owners[stream_id] = owner
        return next(self._lease_tokens)

    async def take_lease(
        self, stream_id: str, owner: str, ttl_s: float, *, from_owner: str
    ) -> int | None:
        return await self.acquire_lease(stream_id, owner, ttl_s)

    async def renew_lease(self, stream_id: str, ttl_s: float) -> bool:
        self._check()
        return True

    async def renew_leases(self, stream_ids: Sequence[str], ttl_s: float) -> dict[str, bool]:
        self._check()
        return dict.fromkeys(stream_ids, True)

    async def release_lease(self, stream_id: str) -> None:
        self._check()
        self._lease_owners.pop(stream_id, None)

    async def lease_owner(self, stream_id: str) -> str | None:
        self._check()
        return self._lease_owners.get(stream_id)

    def _meta(self, stream_id: str) -> dict[str, str]:
        meta = self._streams.get(stream_id)
        if meta is None:
            raise missing_stream(stream_id)
        return meta
