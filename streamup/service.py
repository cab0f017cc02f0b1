"""Orchestration only: watcher -> streams -> storage/checkpoint, recovery, shutdown.

The agent wires the rooms together and keeps the books of its streams (which are running, on
which path, which are completed); the seams are made and opened in `seams`, new files become
streams in `stream.discovery`, and each stream lives in `stream.drive`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import structlog

from streamup import metrics
from streamup.after.delivery import Dispatcher
from streamup.after.local_action import Policy
from streamup.after.local_files import LocalFiles
from streamup.checkpoint import CheckpointStore
from streamup.errors import StreamupError
from streamup.files.closes import CloseWatch
from streamup.files.liveness import AgentMarks
from streamup.files.watcher import Watcher
from streamup.models import AgentSnapshot, CompletedRecord, EndReason, StreamRecord, StreamView
from streamup.ops.http import STARTING, serve_http
from streamup.ops.report import agent_document
from streamup.ops.startup import StartupWait
from streamup.s3.bandwidth import describe as describe_bandwidth
from streamup.s3.client import S3Storage
from streamup.s3.opening import make_storage
from streamup.s3.orphans import reap_orphans
from streamup.s3.placement import KeyPlanner
from streamup.seams import make_store, open_seams, open_unless, stream_context
from streamup.settings import Settings
from streamup.stream.discovery import Chores, Discovery
from streamup.stream.drive import drive
from streamup.stream.forgotten import (
    CompletedWriteBack,
    StoreWatch,
    restore_forgotten,
)
from streamup.stream.ownership import Ownership, host_of
from streamup.stream.worker import StreamWorker

log = structlog.get_logger("streamup")


class Agent:
    """The long-running agent behind `streamup run`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CheckpointStore | None = None,
        storage: S3Storage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings)
        self.storage = storage or make_storage(settings)
        self.stopping = asyncio.Event()
        self.ctx = stream_context(settings, self.store, self.storage, self.stopping)
        self.dispatcher = Dispatcher.for_agent(
            self.store, settings, self.stopping, host=host_of(settings.agent_id)
        )
        self.marks = AgentMarks(settings.state_dir / "agents", settings.agent_id)
        self.keys = KeyPlanner(self.storage, self.store, settings.key_template)
        self.ownership = Ownership(
            self.store,
            agent_id=settings.agent_id,
            ttl_s=settings.lease_ttl_seconds,
            stopping=self.stopping,
            take_over=self._resume_owned,
            shared=settings.redis_url is not None,
            marks=self.marks,
        )
        self.completed_back = CompletedWriteBack(self.store, lambda: self.completed)
        self.ctx.restore = lambda worker: restore_forgotten(
            worker,
            lambda: self.ownership.acquire(worker.record.stream_id),
            restored=lambda: self.chores.spawn(self.completed_back.write_back()),
        )
        self.workers: dict[str, StreamWorker] = {}
        self.store_watch = StoreWatch(
            self.store, settings.agent_id, self.completed_back, lambda: list(self.workers.values())
        )
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.by_path: dict[str, str] = {}  # path -> id of the stream that currently owns it
        self.completed: dict[str, CompletedRecord] = {}
        self.chores = Chores()
        self.discovery = Discovery(
            settings, self.ctx, self.ownership, self.keys,
            workers=self.workers, by_path=self.by_path, completed=lambda: self.completed,
            launch=lambda worker, resumed: self._launch(worker, resumed=resumed),
            chores=self.chores,
        )  # fmt: skip
        self.ready = asyncio.Event()
        endpoint = settings.s3_endpoint_url
        self.waiting = StartupWait(
            f"S3_ENDPOINT_URL={endpoint}" if endpoint else "AWS (S3_ENDPOINT_URL unset)",
            self.store.name,
        )
        self.local = self._local_files()

    # ------------------------------------------------------------- start and stop

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        server = await self._serve_http()  # /healthz says "starting" while the opening waits
        try:
            opening = open_seams(self.settings, self.ctx, self.waiting, self.marks)
            opened = await open_unless(stop, opening)
        finally:
            if server is not None and not self.waiting.opened:
                server.close()
        if not opened:
            return
        watcher = Watcher(
            self.settings.watch_dir,
            self.settings.watch_extensions,
            scan_interval_s=self.settings.scan_interval_seconds,
            on_path=self.discovery.observe,
            on_scan=self.discovery.on_scan,
        )
        background: list[asyncio.Task[Any]] = []
        closes = CloseWatch(
            self.settings.watch_dir, self.settings.watch_extensions, on_close=self.discovery.observe
        )
        if closes.start():
            self.ctx.closes = closes
        try:
            await self.store_watch.start()  # before the load: a loss after it is seen
            self.completed = await self.store.completed_files()
            for record in await self.store.unfinished_streams():
                await self._adopt(record)
            await watcher.scan_once()
            background = [
                asyncio.create_task(self.local.run()),
                asyncio.create_task(watcher.run_events(self.stopping)),
                asyncio.create_task(watcher.run_scans(self.stopping)),
                asyncio.create_task(self._update_gauges()),
                asyncio.create_task(self.dispatcher.run()),
                asyncio.create_task(self.store_watch.run(self.stopping)),
            ]
            if self.settings.orphan_upload_age_seconds > 0:
                background.append(asyncio.create_task(reap_orphans(
                    self.storage, self.store, self._fixed_prefix(),
                    max_age_s=self.settings.orphan_upload_age_seconds,
                    live_upload_ids=lambda: {w.record.upload_id for w in self.workers.values()},
                    stopping=self.stopping,
                )))  # fmt: skip
            log.info(
                "agent.started",
                watch_dir=str(self.settings.watch_dir),
                store=self.store.name,
                bucket=self.settings.s3_bucket_name,
                resumed=len(self.workers),
                files_open_max=self.ctx.files.size,
            )
            self.ready.set()
            await stop.wait()
        finally:
            self.stopping.set()
            if server is not None:
                server.close()
            await self._drain()
            await self.ownership.release_all()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            closes.stop()
            await self.storage.close()
            await self.store.close()
            self.marks.release()
            log.info("agent.stopped")

    async def _serve_http(self) -> asyncio.Server | None:
        if not self.settings.prom_port:
            return None
        token = self.settings.status_token
        return await serve_http(
            self.settings.prom_host, self.settings.prom_port, self.status, self.healthy,
            snapshot=self.snapshot, read_object=self.storage.get_bytes,
            token=token.get_secret_value() if token is not None else None,
        )  # fmt: skip

    def _fixed_prefix(self) -> str:
        """What every key this agent makes starts with ('' when the template starts with a
        field that changes per stream): where the orphan reaper looks."""
        s = self.settings
        return s.key_template.fixed_prefix(s.s3_key_prefix, self.ownership.host)

    async def _drain(self) -> None:
        """Let in-flight parts land within the grace period, then cancel what is left."""
        for worker in self.workers.values():
            worker.wake()
        tasks = list(self.tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
            if late and self.ctx.pacer is not None:
                self.ctx.pacer.stop()  # paced parts would outlast the grace: left for resume
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _adopt(self, record: StreamRecord) -> None:
        """At start-up: resume an unfinished stream if its lease is free, else stand by."""
        if self.ownership.may_take(record) and await self.ownership.acquire(record.stream_id):
            await self._resume_owned(record)
            return
        self.ownership.watch(record.stream_id, record.path, record.identity.inode)

    async def _resume_owned(self, record: StreamRecord) -> None:
        """Resume a stream whose lease we hold, from its checkpoint (restart or takeover)."""
        parts = await self.store.load_parts(record.stream_id)
        # Its file is opened when its turn comes (`stream.drive.hold`), like a new stream's.
        worker = StreamWorker(self.ctx, record, parts, None)
        worker.log.info("stream.resuming", status=record.status.value, parts=len(parts))
        self._launch(worker, resumed=True)

    def _launch(self, worker: StreamWorker, *, resumed: bool = False) -> None:
        stream_id = worker.record.stream_id
        self.workers[stream_id] = worker
        self.by_path[worker.record.path] = stream_id
        self.tasks[stream_id] = asyncio.create_task(self._drive(worker, resumed))
        self.ownership.keep(stream_id, on_lost=lambda: self._lost(worker))

    def _lost(self, worker: StreamWorker) -> None:
        """Another agent holds the lease now: stop at once; it resumes from the checkpoint."""
        if worker.record.status.is_final:
            return  # finished meanwhile: the finish removed the lease the renewal looked for
        self.chores.spawn(self._lost_or_forgotten(worker))

    async def _lost_or_forgotten(self, worker: StreamWorker) -> None:
        if await worker.restored():  # the store only lost it: renew again and go on
            stream_id = worker.record.stream_id
            if self.tasks.get(stream_id) is not None:
                self.ownership.keep(stream_id, on_lost=lambda: self._lost(worker))
            return
        if worker.record.status.is_final:
            return
        worker.lease_lost = True
        worker.log.warning("stream.lease_lost", action="backing off")
        task = self.tasks.get(worker.record.stream_id)
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------- one stream's life

    async def _drive(self, worker: StreamWorker, resumed: bool) -> None:
        """The stream's life (stream.drive), then the agent forgets it: its lease, its place."""
        try:
            await drive(worker, resumed)
        finally:
            if worker.source is not None:
                worker.source.close()
            stream_id = worker.record.stream_id
            unfinished = not worker.record.status.is_final and not worker.lease_lost
            self.ownership.drop(stream_id, held=unfinished)
            if worker.lease_lost and not self.stopping.is_set():
                record = worker.record
                self.ownership.watch(stream_id, record.path, record.identity.inode)
            self.workers.pop(stream_id, None)
            self.tasks.pop(stream_id, None)
            if self.by_path.get(worker.record.path) == stream_id:
                del self.by_path[worker.record.path]
            done = worker.completed_record
            if done is not None:
                self.dispatcher.poke()  # its event is in the outbox
            if done is not None and done.end_reason is EndReason.IDLE:
                self.completed[worker.record.path] = done
                self.local.kick()

    # ------------------------------------------------------------- observability

    async def _update_gauges(self) -> None:
        while not self.stopping.is_set():
            workers = list(self.workers.values())
            metrics.STREAMS_ACTIVE.set(len(workers))
            metrics.STREAMS_STALLED.set(sum(1 for w in workers if w.stalled))
            metrics.UPLOAD_LAG.set(sum(w.lag_bytes for w in workers))
            if self.ctx.pacer is not None:
                self.ctx.pacer.refresh()  # the change is logged on time, parts in flight or not
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def healthy(self) -> bool | str:
        """/healthz: the agent is up (not starting, not stopping) and the checkpoint store answers.
        Up but short of disk (MIN_FREE_BYTES, nothing deletable): the reason, answered 200.

        The HTTP server runs on this event loop, so being asked at all proves the loop is alive.
        """
        if not self.ready.is_set() and not self.stopping.is_set():
            return STARTING
        if not self.ready.is_set() or self.stopping.is_set():
            return False
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
        except (StreamupError, TimeoutError, OSError):
            return False
        return self.local.short or True

    def _local_files(self) -> LocalFiles:
        """The local-file action and the free-space guard (after.local_files)."""
        policy = Policy.of(self.settings, host=host_of(self.settings.agent_id))
        return LocalFiles(
            policy, self.store, self.storage,
            records=lambda: self.completed,
            busy=lambda path: path in self.by_path or path in self.discovery.starting,
            lag_bytes=lambda: sum(w.lag_bytes for w in self.workers.values()),
            stopping=self.stopping,
            event_written=self.dispatcher.poke,
        )  # fmt: skip

    def snapshot(self) -> AgentSnapshot:
        """A copy of what the operator's faces show; taken on this loop, so it is consistent."""
        return AgentSnapshot(
            agent_id=self.settings.agent_id,
            store_name=self.store.name,
            watch_dir=str(self.settings.watch_dir),
            integrity=self.ctx.integrity.describe(),
            disk=self.local.view(),
            bandwidth=describe_bandwidth(self.settings.bandwidth, datetime.now()),
            streams=tuple(
                StreamView(w.record, len(w.parts), w.stalled, w.last_error)
                for w in self.workers.values()
            ),
        )

    async def status(self) -> dict[str, object]:
        """/status: the same document as `streamup status --json`, from the live workers."""
        return await agent_document(self.snapshot(), self.store)
