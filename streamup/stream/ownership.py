"""Stream ownership when several agents share one checkpoint store (one Redis for a fleet).

Only the owner of a stream's lease uploads its parts, completes it and writes its metadata.
The owner renews its leases three times per TTL, all of them in one round trip per round
(stream.renewal); if it dies, its lease lapses and another agent that can see the file takes the
stream over and resumes it from the checkpoint, exactly as after a restart. An agent of the
same host whose process is gone (files.liveness: the kernel dropped its lock) is not waited for:
its leases are taken over at once.

An owner that was paused past its lease (SIGSTOP, a VM freeze) finds out at its next
renewal or its next checkpoint write (the store fences those writes) and backs off.

With the embedded SQLite store there is one agent per store, and every lease is granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from streamup.checkpoint import CheckpointStore
from streamup.errors import StreamupError
from streamup.files.liveness import AgentMarks
from streamup.files.source import stat_path
from streamup.models import StreamRecord
from streamup.stream.renewal import lost_leases

log = structlog.get_logger("streamup")


def host_of(agent_id: str) -> str:
    """`host:pid` -> `host`; an identity without a colon is a host name already."""
    return agent_id.rsplit(":", 1)[0] if ":" in agent_id else agent_id


@dataclass(frozen=True, slots=True)
class _Kept:
    registration: int  # which `keep` of the stream this is (stream.renewal)
    on_lost: Callable[[], None]


class Ownership:
    """The leases this agent holds, and the streams it stands by to take over."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        agent_id: str,
        ttl_s: float,
        stopping: asyncio.Event,
        take_over: Callable[[StreamRecord], Awaitable[None]],
        shared: bool = True,
        marks: AgentMarks | None = None,
    ) -> None:
        self.store = store
        self.shared = shared  # False: one agent per store (SQLite), every stream is ours
        self.agent_id = agent_id
        self.host = host_of(agent_id)
        self.ttl_s = ttl_s
        self.stopping = stopping
        self._take_over = take_over
        self._kept: dict[str, _Kept] = {}  # leases renewed each round, by stream id
        self._registrations = itertools.count()
        self._renewer: asyncio.Task[None] | None = None
        self._held: set[str] = set()  # leases of unfinished streams, released on shutdown
        self._standby: dict[str, asyncio.Task[None]] = {}
        # path -> inode of each file whose stream another agent owns: discovery leaves it alone.
        self.foreign: dict[str, int] = {}
        # Which agents of this host are alive (files.liveness); None: every holder counts as.
        self.marks = marks

    async def acquire(self, stream_id: str) -> bool:
        """Take the stream's lease: free, lapsed, ours already, or held by a dead agent of
        this host (a restart does not wait for its own predecessor's lease to lapse)."""
        if await self.store.acquire_lease(stream_id, self.agent_id, self.ttl_s) is not None:
            return True
        return await self._take_from_dead(stream_id)

    async def _take_from_dead(self, stream_id: str) -> bool:
        if self.marks is None:
            return False
        holder = await self.store.lease_owner(stream_id)
        if holder is None or host_of(holder) != self.host or not self.marks.is_dead(holder):
            return False
        taken = await self.store.take_lease(stream_id, self.agent_id, self.ttl_s, from_owner=holder)
        if taken is None:
            return False
        log.info("lease.taken_from_dead_agent", stream_id=stream_id, previous_owner=holder)
        return True

    def may_take(self, record: StreamRecord) -> bool:
        """Take a stream only when this agent sees its file (same inode: device numbers differ
        between NFS clients), or when the file left its path (deleted or replaced) on this very
        host. With a store of its own, every stream is this agent's."""
        if not self.shared:
            return True
        state = stat_path(record.path)
        if state is not None and state.identity.inode == record.identity.inode:
            return True
        return record.host in ("", self.host)

    # ------------------------------------------------------------- leases we hold

    def keep(self, stream_id: str, on_lost: Callable[[], None]) -> None:
        """Renew the lease with the others in the background; call `on_lost` if another agent
        took it (once; `keep` again after a write-back)."""
        self._held.add(stream_id)
        self._kept[stream_id] = _Kept(next(self._registrations), on_lost)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_all())

    async def _renew_all(self) -> None:
        """One round per TTL/3 for every lease held (stream.renewal): one store round trip."""
        period_s = self.ttl_s / 3
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period_s)
            if self.stopping.is_set():
                return
            try:
                await self.renew_round()
            except Exception as exc:  # a bug; a renewer that died would let every lease lapse
                log.error("lease.renew_failed", error=f"{type(exc).__name__}: {exc}")

    async def renew_round(self) -> None:
        """Renew every lease held now, in one call; each lost one's `on_lost`, once."""
        sent = {stream_id: kept.registration for stream_id, kept in self._kept.items()}
        if not sent:
            return
        try:
            reply = await self.store.renew_leases(list(sent), self.ttl_s)
        except StreamupError as exc:
            # The store is unreachable: keep trying; the leases may lapse meanwhile, and the
            # fenced writes will tell.
            log.warning("lease.renew_failed", streams=len(sent), error=str(exc))
            return
        now = {stream_id: kept.registration for stream_id, kept in self._kept.items()}
        for stream_id in lost_leases(sent, reply, now):
            self._kept.pop(stream_id).on_lost()

    def drop(self, stream_id: str, *, held: bool) -> None:
        """Stop renewing. `held`: the stream is unfinished and still ours (release it later)."""
        self._kept.pop(stream_id, None)
        if not held:
            self._held.discard(stream_id)

    async def release_all(self) -> None:
        """On shutdown, once no stream writes any more: hand unfinished streams over at once
        instead of after the TTL."""
        for stream_id in list(self._held):
            self.drop(stream_id, held=False)
            with contextlib.suppress(StreamupError):
                await self.store.release_lease(stream_id)
        for task in self._standby.values():
            task.cancel()
        if self._renewer is not None:
            self._renewer.cancel()

    # ------------------------------------------------------------- streams others own

    def watching(self, stream_id: str) -> bool:
        return stream_id in self._standby

    def is_foreign(self, path: str, inode: int) -> bool:
        return self.foreign.get(path) == inode

    def watch(self, stream_id: str, path: str, inode: int) -> None:
        """Stand by for a stream another agent owns; take it over when its lease lapses."""
        self.foreign[path] = inode
        if stream_id not in self._standby:
            task = asyncio.create_task(self._stand_by(stream_id, path))
            self._standby[stream_id] = task

    async def _stand_by(self, stream_id: str, path: str) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    record = await self.store.load_stream(stream_id)
                    if record is None or record.status.is_final:
                        return  # its owner finished it
                    if self.may_take(record) and await self.acquire(stream_id):
                        owner = record.host or "another agent"
                        log.info(
                            "stream.taken_over",
                            stream_id=stream_id,
                            path=record.path,
                            previous_host=owner,
                        )
                        del self._standby[stream_id]
                        self.foreign.pop(path, None)
                        await self._take_over(record)
                        return
                except StreamupError as exc:
                    log.warning("lease.standby_failed", stream_id=stream_id, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.ttl_s / 3)
        finally:
            if self._standby.get(stream_id) is asyncio.current_task():
                del self._standby[stream_id]
            # Finished or ours now: discovery may look at the path again (a file that grows
            # after completion is a new stream).
            self.foreign.pop(path, None)
