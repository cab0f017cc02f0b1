"""The checkpoint store interface every backend implements.

Rules every backend keeps:
- A part's record, its checksum and the stream's progress change together, atomically.
- Finishing a stream removes its working state and writes its compact record in one step.
- What is kept of finished streams is bounded (`history_limit` recent completions), apart from
  the per-file records that live as long as their file does (pruned by `forget_completed_file`).
- The event outbox: an event is written in the very step that finishes its stream (or, for the
  local-file action's events, that forgets the file's record), and leaves only through
  `remove_event`, once every sink has it (at least once, across crashes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from streamup.models import (
    Claim,
    CompletedRecord,
    DeliveryState,
    OutboxEntry,
    OutboxEvent,
    PartRecord,
    StreamRecord,
)


class CheckpointStore(Protocol):
    """Durable state of every stream; nothing else is needed to resume after a crash."""

    name: str  # "sqlite" or "redis", for logs and status

    async def open(self) -> None:
        """Connect / create the schema. Raises CheckpointError with a clear message."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise CheckpointError when the store does not answer."""

    async def save_stream(self, stream: StreamRecord) -> None:
        """Insert or replace a stream's record (not its parts); keep status sets in step."""

    async def record_part(
        self, stream_id: str, part: PartRecord, uploaded_bytes: int, last_activity_at: datetime
    ) -> None:
        """Atomically store `part` (replacing any of its number) and the stream's progress."""

    async def remove_parts(
        self, stream_id: str, numbers: Iterable[int], uploaded_bytes: int
    ) -> None:
        """Atomically drop parts (a file that shrank) and set the stream's progress."""

    async def load_stream(self, stream_id: str) -> StreamRecord | None: ...

    async def load_parts(self, stream_id: str) -> dict[int, PartRecord]:
        """Every checkpointed part by number. A malformed record raises CheckpointCorrupt."""

    async def unfinished_streams(self) -> list[StreamRecord]:
        """Every stream whose status is not final, oldest first."""

    async def finish_stream(
        self, stream: StreamRecord, record: CompletedRecord, event: OutboxEvent | None = None
    ) -> None:
        """Atomically: remove the stream's working state (meta, parts, set memberships), store
        `record` as the path's completed record and as a recent completion (trimmed to the
        history limit; trimmed streams leave the completed set too), and put `event` in the
        outbox. A retried finish keeps the event first written under that id, and its place."""

    async def completed_files(self) -> dict[str, CompletedRecord]:
        """The completed record of every path that still has one, keyed by path."""

    async def forget_completed_file(
        self, path: str, stream_id: str | None = None, event: OutboxEvent | None = None
    ) -> None:
        """The file is gone: drop its completed record (recent-completion history is kept).
        With `stream_id`: only while the path's record is still that stream's, and then, in the
        same atomic step, put `event` (that stream's) in the outbox. No record of that stream,
        no event: a retried call writes nothing twice."""

    async def completed_file(self, path: str) -> CompletedRecord | None:
        """The path's completed record, or None."""

    async def update_completed_file(self, record: CompletedRecord) -> bool:
        """Replace the path's completed record by `record` (the local-file action's intent)
        while it is still the record of the same stream; False, writing nothing, otherwise."""

    async def restore_completed_files(self, records: Sequence[CompletedRecord]) -> int:
        """Write back records the store forgot (it was flushed, its file deleted): each one for
        its path unless the store holds a record of that path now. Returns how many it wrote."""

    async def recent_completions(self, limit: int) -> list[CompletedRecord]:
        """Newest first."""

    # ---- the event outbox

    async def outbox(self) -> list[OutboxEntry]:
        """Every event waiting in the outbox with each sink's progress, in the order written."""

    async def set_delivery(self, event_id: str, sink: str, state: DeliveryState) -> None:
        """Record a sink's progress with an event; nothing when the event left the outbox."""

    async def remove_event(self, event_id: str) -> None:
        """The event reached every sink: drop it and its delivery states."""

    # ---- many agents, one store: claims and leases (single-agent stores grant everything)

    async def claim_stream(
        self, stream: StreamRecord, *, owner: str | None = None, ttl_s: float = 0.0
    ) -> tuple[Claim, str]:
        """Atomically register a file an agent has just found, as `stream` (status active),
        and with `owner`, in the same step, take the new stream's lease for `ttl_s` (then
        nobody can take over the claimed stream before its finder holds the lease).

        - (NEW, stream.stream_id): nothing covered the file; `stream` is saved, like save_stream.
        - (EXISTING, other_id): an unfinished stream has the same path and inode.
        - (COMPLETED, other_id): the path's completed record has the same inode, size and mtime.
        Inode only, not device: NFS clients number devices differently for one file.
        """

    async def acquire_lease(self, stream_id: str, owner: str, ttl_s: float) -> int | None:
        """Take the stream's lease when nobody holds it (or it expired). Returns a fencing token
        that grows with every acquisition, or None when another owner holds the lease. From then
        on this store instance fences its writes for the stream with that lease."""

    async def take_lease(
        self, stream_id: str, owner: str, ttl_s: float, *, from_owner: str
    ) -> int | None:
        """Take the lease from `from_owner`, an agent known to be dead (files.liveness), while
        it still holds it (or nobody does): the fencing token, or None when someone else holds
        the lease now. One atomic step, so two agents cannot both win it."""

    async def renew_lease(self, stream_id: str, ttl_s: float) -> bool:
        """Extend our lease; False when it is not ours any more (then writes raise LeaseLost)."""

    async def renew_leases(self, stream_ids: Sequence[str], ttl_s: float) -> dict[str, bool]:
        """`renew_lease` of every stream named, in one round trip to the store: each stream id
        -> still ours (and extended). One stream's lost lease leaves the others' renewed."""

    async def release_lease(self, stream_id: str) -> None:
        """Give our lease up so another agent need not wait for it to expire."""

    async def lease_owner(self, stream_id: str) -> str | None:
        """Who holds the stream's lease now, or None."""


@runtime_checkable
class PresenceMarks(Protocol):
    """A store that can lose everything while the agent runs without any call failing (a Redis
    flushed, or restarted without persistence): the agent leaves a mark in it at start-up and
    looks for it every few seconds (stream.forgotten.StoreWatch); a store without the mark
    has forgotten what it held."""

    async def mark_present(self, agent_id: str) -> None:
        """Leave (or renew) this agent's mark."""

    async def still_marked(self, agent_id: str) -> bool:
        """Whether this agent's mark is still there (renewing it); False once the store lost it."""
