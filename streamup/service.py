"""Orchestration only: watcher -> streams -> storage/checkpoint, recovery, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

import structlog

from streamup import metrics
from streamup.after.delivery import Dispatcher
from streamup.after.lifecycle import Action
from streamup.after.local_action import LocalFiles, Policy
from streamup.checkpoint import CheckpointStore
from streamup.checkpoint.redis_connect import REDIS_MAX_CONNECTIONS
from streamup.checkpoint.sqlite import SqliteStore
from streamup.errors import CheckpointError, ConfigError, LeaseLost, StorageError, StreamupError
from streamup.files.budget import (
    FileBudget,
    FileGone,
    files_budget,
    open_files_limit,
    out_of_descriptors,
)
from streamup.files.closes import CloseWatch
from streamup.files.liveness import AgentMarks
from streamup.files.source import SourceFile, readable, stat_path
from streamup.files.watcher import Watcher, relative_key_path
from streamup.models import (
    AgentSnapshot,
    Claim,
    CompletedRecord,
    EndReason,
    Extension,
    FileState,
    Status,
    StreamRecord,
    StreamView,
    utc_now,
)
from streamup.ops.http import STARTING, serve_http
from streamup.ops.report import agent_document
from streamup.ops.startup import StartupWait
from streamup.retry import Backoff, retrying
from streamup.s3.bandwidth import describe as describe_bandwidth
from streamup.s3.client import S3Storage
from streamup.s3.integrity import Capabilities, ProofMode, probe
from streamup.s3.keys import KeyFields
from streamup.s3.orphans import reap_orphans
from streamup.s3.pacing import Pacer, PrioritySlots
from streamup.s3.parts import PartSchedule
from streamup.s3.placement import KeyPlanner, Placement, refused_option
from streamup.settings import Settings
from streamup.stream.extension import plan_extension, worth_checking
from streamup.stream.finalize import finalize, finish_lost, write_metadata
from streamup.stream.forgotten import (
    CompletedWriteBack,
    rebuild_lost_sqlite,
    restore_forgotten,
)
from streamup.stream.ownership import Ownership, host_of
from streamup.stream.recovery import reconcile
from streamup.stream.worker import PERMANENT_ERROR_PAUSE_S, StreamContext, StreamWorker

log = structlog.get_logger("streamup")
# Work put off by a passing condition is said once per this many seconds, not once per file.
DEFERRED_REPEAT_S = 60.0
# How often the agent looks whether its SQLite file is still there.
SQLITE_CHECK_S = 2.0
# Start-up against a busy or absent server: soon at first, then every 15 s at most.
STARTUP_BACKOFF = Backoff(first_s=0.5, factor=2.0, cap_s=15.0)


def make_store(settings: Settings, *, exclusive: bool = True) -> CheckpointStore:
    """Redis when REDIS_URL is set, else the embedded SQLite store under STATE_DIR."""
    if settings.redis_url is not None:
        from streamup.checkpoint.redis import RedisStore

        return RedisStore(
            settings.redis_url.get_secret_value(), history_limit=settings.completed_history_limit
        )
    from streamup.checkpoint.sqlite import SqliteStore

    return SqliteStore(
        settings.state_dir, history_limit=settings.completed_history_limit, exclusive=exclusive
    )


def s3_connections(settings: Settings) -> int:
    return settings.upload_concurrency * 2 + 4


def pooled_descriptors(settings: Settings) -> int:
    """Descriptors the connection pools may hold: S3's, and Redis's (checkpoint.redis)."""
    redis = REDIS_MAX_CONNECTIONS if settings.redis_url is not None else 0
    return s3_connections(settings) + redis


def make_storage(settings: Settings) -> S3Storage:
    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    return S3Storage(
        bucket=settings.s3_bucket_name,
        region=settings.s3_region_name,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=secret(settings.s3_access_key_id),
        secret_access_key=secret(settings.s3_secret_access_key),
        max_connections=s3_connections(settings),
    )


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
        pacer = Pacer(settings.bandwidth) if settings.bandwidth.limited else None
        self.ctx = StreamContext(
            storage=self.storage,
            store=self.store,
            part_slots=PrioritySlots(
                settings.upload_concurrency,
                keep_one_for_live=lambda: pacer is not None and pacer.rate is not None,
            ),
            pacer=pacer,
            window=settings.upload_concurrency,
            timeout_s=settings.stream_timeout_seconds,
            stopping=self.stopping,
            ffprobe_path=settings.ffprobe_path,
            ffprobe_timeout_s=settings.ffprobe_timeout_seconds,
            lease_ttl_s=settings.lease_ttl_seconds,
            agent_host=host_of(settings.agent_id),
            object_options=settings.object_options,
            files=FileBudget(files_budget(open_files_limit(), pooled_descriptors(settings))),
        )
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
            restored=lambda: self._spawn(self.completed_back.write_back()),
        )
        self.workers: dict[str, StreamWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.by_path: dict[str, str] = {}  # path -> id of the stream that currently owns it
        self.completed: dict[str, CompletedRecord] = {}
        self._starting: set[str] = set()
        self._unreadable: dict[str, FileState] = {}
        self._deferred_said_at = -DEFERRED_REPEAT_S  # "stream.deferred" is said once a minute
        self._chores: set[asyncio.Task[None]] = set()  # fire-and-forget, kept referenced
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
        server = await self._serve_http()  # /healthz says "starting" while _open waits
        try:
            opened = await self._open_unless(stop)
        finally:
            if server is not None and not self.waiting.opened:
                server.close()
        if not opened:
            return
        watcher = Watcher(
            self.settings.watch_dir,
            self.settings.watch_extensions,
            scan_interval_s=self.settings.scan_interval_seconds,
            on_path=self.observe,
            on_scan=self._on_scan,
        )
        background: list[asyncio.Task[Any]] = []
        closes = CloseWatch(
            self.settings.watch_dir, self.settings.watch_extensions, on_close=self.observe
        )
        if closes.start():
            self.ctx.closes = closes
        try:
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
                asyncio.create_task(self._guard_sqlite()),
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

    async def _open_unless(self, stop: asyncio.Event) -> bool:
        """`_open`, given up (False) when asked to stop while it waits for a server."""
        opening = asyncio.create_task(self._open())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait((opening, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if opening.done():
            opening.result()
            return True
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        log.info("agent.stopped", during="start-up")
        return False

    async def _open(self) -> None:
        """Open the store and S3, patiently: a server that answers 5xx or 429, refuses the
        connection or times out is waited for up to STARTUP_TIMEOUT_SECONDS (0: forever), one
        log line per episode, /healthz answering "starting"; a permanent error (403, a bad
        bucket name, bad credentials) ends the start at once."""
        if self.settings.redis_url is not None:
            self.marks.hold()  # agents sharing a store: tell a restarted agent we are gone
        timeout_s = self.settings.startup_timeout_seconds
        try:
            async with asyncio.timeout(timeout_s or None):
                await self._open_patiently()
        except TimeoutError:
            await self._close_seams()
            raise ConfigError(
                f"gave up starting after STARTUP_TIMEOUT_SECONDS={timeout_s:g}:"
                f" {self.waiting.given_up()}; fix the server or raise STARTUP_TIMEOUT_SECONDS"
                " (0 waits forever)"
            ) from None
        except BaseException as exc:
            await self._close_seams()
            if isinstance(exc, StorageError):
                raise ConfigError(
                    f"S3_BUCKET_NAME={self.settings.s3_bucket_name} cannot be used: {exc}"
                ) from None
            if isinstance(exc, CheckpointError):
                raise ConfigError(str(exc)) from None
            raise
        self.waiting.over()

    async def _open_patiently(self) -> None:
        note = self.waiting.note
        await retrying(self.store.open, backoff=STARTUP_BACKOFF, on_retry=note("checkpoint store"))
        await self.storage.open()
        created = await retrying(
            self.storage.ensure_bucket, backoff=STARTUP_BACKOFF, on_retry=note("bucket")
        )
        if created:
            log.info("bucket.created", bucket=self.settings.s3_bucket_name)
        self.ctx.integrity = await self._integrity()
        await self._check_object_options()

    async def _close_seams(self) -> None:
        with contextlib.suppress(StreamupError, OSError):
            await self.storage.close()
        with contextlib.suppress(StreamupError, OSError):
            await self.store.close()

    async def _integrity(self) -> Capabilities:
        """What this endpoint proves of each part: asked once at start-up, or as configured."""
        mode = self.settings.s3_integrity_mode
        if mode == "auto":
            try:
                caps = await retrying(
                    lambda: probe(self.storage, self.settings.s3_key_prefix),
                    backoff=STARTUP_BACKOFF, on_retry=self.waiting.note("integrity probe"),
                )  # fmt: skip
            except StorageError as exc:
                raise ConfigError(
                    f"S3_INTEGRITY_MODE=auto could not ask the server what it checks ({exc}); "
                    "set S3_INTEGRITY_MODE to checksum, content_md5, etag or none"
                ) from None
        else:
            caps = Capabilities.forced(ProofMode(mode))
        log.info("s3.integrity", configured=mode, **caps.describe())
        if caps.mode is ProofMode.NONE:
            log.warning(
                "s3.integrity_unproven",
                detail="this server proves no part's bytes (no checksum or Content-MD5 check,"
                " ETags are not MD5s): objects are completed but marked unverified",
            )
        return caps

    def _fixed_prefix(self) -> str:
        """What every key this agent makes starts with ('' when the template starts with a
        field that changes per stream): where the orphan reaper looks."""
        s = self.settings
        return s.key_template.fixed_prefix(s.s3_key_prefix, self.ownership.host)

    async def _check_object_options(self) -> None:
        """Once at start-up: a server that refuses an object option (Ceph RGW: SSE over plain
        HTTP, classes other than STANDARD) would fail every stream; say which setting, once."""
        s = self.settings
        refused = await retrying(
            lambda: refused_option(self.storage, s.s3_key_prefix, self.ctx.object_options),
            backoff=STARTUP_BACKOFF, on_retry=self.waiting.note("object options check"),
        )  # fmt: skip
        if refused is not None:
            setting, exc = refused
            value = getattr(s, setting.lower(), None) if "," not in setting else None
            shown = setting if value is None else f"{setting}={value}"
            raise ConfigError(
                f"{shown} is refused by the server ({exc}); unset it or change it to what "
                "the server supports"
            ) from None

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

    # ------------------------------------------------------------- discovery

    def _on_scan(self, paths: list[str]) -> None:
        seen = set(paths)
        for path in paths:
            self.observe(path)
        for path in [p for p in self.completed if p not in seen]:
            # The file is gone: its record has done its job (it would never match again).
            del self.completed[path]
            self._spawn(self._forget(path))

    def _spawn(self, chore: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(chore)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[None]) -> None:
        # Retrieved here, so a failed chore is one log line and never "Task exception was never
        # retrieved"; what it did not do, the next scan or event asks for again.
        self._chores.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if out_of_descriptors(exc) or (isinstance(exc, StreamupError) and exc.retryable):
            self._note_deferred("", exc)
            return
        log.error("agent.chore_failed", error=f"{type(exc).__name__}: {exc}")
        log.debug("agent.chore_traceback", exc_info=exc)

    def _note_deferred(self, path: str, exc: BaseException) -> None:
        """Work put off by a passing condition (out of descriptors): said once per episode."""
        now = time.monotonic()
        if now - self._deferred_said_at >= DEFERRED_REPEAT_S:
            self._deferred_said_at = now
            error = exc.strerror if isinstance(exc, OSError) else str(exc)
            hint = "raise the open-files limit (ulimit -n); the next scan tries again"
            log.error("stream.deferred", path=path, error=error, hint=hint)

    async def _forget(self, path: str) -> None:
        with contextlib.suppress(StreamupError):
            await self.store.forget_completed_file(path)

    def observe(self, path: str) -> None:
        """A hint that `path` changed: wake its stream, or start one for a new recording."""
        if self.stopping.is_set() or path in self._starting:
            return
        state = stat_path(path)
        if state is not None and self.ownership.is_foreign(path, state.identity.inode):
            return  # another agent's stream; we stand by for it
        stream_id = self.by_path.get(path)
        if stream_id is not None:
            worker = self.workers[stream_id]
            worker.wake()
            if state is None or state.identity == worker.record.identity:
                return
            # Another file took the path: the old stream ends on its own (it holds its file
            # open); the new file is a new recording.
            del self.by_path[path]
        if state is None:
            return
        done = self.completed.get(path)
        if done is not None and done.matches(state):
            return
        if self._unreadable.get(path) == state:
            return
        self._starting.add(path)
        self._spawn(self._start(path, state))

    async def _start(self, path: str, state: FileState) -> None:
        try:
            exc = readable(path)  # the file is opened when its turn comes (files.budget)
            if exc is not None:
                if out_of_descriptors(exc):
                    # Out of descriptors, not a bad file: the next scan tries again.
                    self._note_deferred(path, exc)
                    return
                self._unreadable[path] = state
                log.error(
                    "stream.unreadable",
                    path=path,
                    error=exc.strerror,
                    hint="fix the file's permissions; it is retried when it changes",
                )
                return
            self._unreadable.pop(path, None)
            s = self.settings
            stream_id = str(uuid.uuid4())
            relative = relative_key_path(s.watch_dir, path)
            now = utc_now()
            fields = KeyFields(s.s3_key_prefix, stream_id, relative, self.ownership.host, now)
            extension = await self._extension(path, state)
            extends, placement = extension or (None, await self._place(fields, path, state))
            if placement is None:
                return
            record = StreamRecord(
                stream_id=stream_id,
                path=path,
                relative_path=relative,
                bucket=s.s3_bucket_name,
                key=placement.key,
                key_collision_of=placement.collision_of,
                status=Status.ACTIVE,
                identity=state.identity,
                part_size_bytes=s.chunk_size_bytes,
                part_size_fixed=s.part_size_fixed,
                started_at=now,
                last_activity_at=now,
                size_bytes=state.size_bytes,
                mtime_ns=state.mtime_ns,
                host=self.ownership.host,
                extends=extends,
            )
            worker = StreamWorker(self.ctx, record, {}, None)
            try:
                # The lease is taken in the claim's own step: no agent can take the stream
                # over between the two (the fleet race of two agents finding one file).
                owner, ttl_s = self.ownership.agent_id, self.ownership.ttl_s
                claim, known_id = await worker.persist(
                    lambda: self.store.claim_stream(record, owner=owner, ttl_s=ttl_s),
                    "checkpoint",
                )
            finally:
                self.keys.release(record.key)
            if claim is not Claim.NEW or not await self.ownership.acquire(known_id):
                self._settle_claim(claim, known_id, path, state)
                return
            if placement.collision_of:
                worker.log.warning("stream.key_collision", key=record.key,
                                   key_collision_of=placement.collision_of)  # fmt: skip
            worker.log.info("stream.discovered", key=record.key,
                            extends=extends.stream_id if extends else None)  # fmt: skip
            self._launch(worker)
        finally:
            self._starting.discard(path)

    async def _extension(self, path: str, state: FileState) -> tuple[Extension, Placement] | None:
        """A completed file that grew: the extension of its object (stream.extension) at its key,
        when the file still begins with that object and the key still holds it; None: a new
        stream at a new key."""
        done = self.completed.get(path)
        if done is None or not worth_checking(done, state):
            return None
        try:
            remote = await retrying(lambda: self.storage.head_object(done.key))
        except StorageError as exc:
            log.warning("stream.not_extended", path=path, reason=str(exc))
            return None
        sha = await self._prefix_sha256(path, state, done.size_bytes)
        there = None if remote is None else (remote.size_bytes, remote.etag)
        schedule = PartSchedule(self.settings.chunk_size_bytes, self.settings.part_size_fixed)
        plan = plan_extension(done, schedule, remote=there, prefix_sha256=sha)
        if isinstance(plan, str):
            log.info("stream.not_extended", path=path, key=done.key, reason=plan)
            return None
        log.info("stream.extending", path=path, key=done.key, from_stream_id=done.stream_id,
                 from_size_bytes=done.size_bytes, size_bytes=state.size_bytes)  # fmt: skip
        return plan, Placement(done.key)

    async def _prefix_sha256(self, path: str, state: FileState, size_bytes: int) -> str | None:
        """The SHA-256 of the file's first bytes, read through a descriptor held only for it
        (a new stream opens its file when its turn comes); None when the file is shorter or
        cannot be read now (then it is not extended: a new stream at a new key)."""
        try:
            source = SourceFile.reopen(path, state.identity, same_device=True)
        except OSError as exc:
            log.warning("stream.not_extended", path=path, reason=exc.strerror)
            return None
        if source is None:
            return None
        try:
            return await source.sha256_of_prefix(size_bytes)
        finally:
            source.close()

    async def _place(self, fields: KeyFields, path: str, state: FileState) -> Placement | None:
        """The new stream's key (S3_KEY_TEMPLATE, never another object's), or None."""
        try:
            return await self.keys.place(fields, [w.record.key for w in self.workers.values()])
        except (ValueError, StreamupError) as exc:
            self._unreadable[path] = state
            log.error("stream.no_key", path=path, error=str(exc),
                      hint="fix S3_KEY_TEMPLATE; the file is retried when it changes")  # fmt: skip
            return None

    def _settle_claim(self, claim: Claim, stream_id: str, path: str, state: FileState) -> None:
        """The file is not ours to start: completed already, or another agent's stream."""
        if claim is Claim.COMPLETED:
            self.completed[path] = CompletedRecord(
                stream_id=stream_id, path=path, bucket=self.settings.s3_bucket_name, key="",
                status=Status.COMPLETED, identity=state.identity, size_bytes=state.size_bytes,
                mtime_ns=state.mtime_ns, completed_at=utc_now(),
            )  # fmt: skip
        elif stream_id not in self.workers:
            self.ownership.watch(stream_id, path, state.identity.inode)

    async def _adopt(self, record: StreamRecord) -> None:
        """At start-up: resume an unfinished stream if its lease is free, else stand by."""
        if self.ownership.may_take(record) and await self.ownership.acquire(record.stream_id):
            await self._resume_owned(record)
            return
        self.ownership.watch(record.stream_id, record.path, record.identity.inode)

    async def _resume_owned(self, record: StreamRecord) -> None:
        """Resume a stream whose lease we hold, from its checkpoint (restart or takeover)."""
        parts = await self.store.load_parts(record.stream_id)
        # Its file is opened when its turn comes (`_hold`), like a new stream's.
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
        self._spawn(self._lost_or_forgotten(worker))

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
        try:
            while not self.stopping.is_set():
                try:
                    await self._live(worker, resumed)
                    return
                except LeaseLost as exc:
                    worker.lease_lost = True
                    worker.log.warning("stream.lease_lost", error=str(exc), action="backing off")
                    return
                except Exception as exc:
                    # A permanent error or a bug in one stream never stops the others: report
                    # it once, wait longer each time, pick the stream up again as after a restart.
                    await worker.pause_after(exc)
                    resumed = True
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

    async def _hold(self, worker: StreamWorker, resumed: bool) -> None:
        """Open the stream's file once the descriptor budget has room (files.budget). A
        resumed stream may have been found by another host: its inode must match, and the
        device it has here is taken (NFS numbers devices per client)."""
        if worker.source is not None:
            return
        record = worker.record
        worker.source = await self.ctx.files.open(
            record.path, record.identity, same_device=not resumed
        )
        if worker.source is not None and worker.source.identity != record.identity:
            worker.record = record.evolve(identity=worker.source.identity)

    async def _live(self, worker: StreamWorker, resumed: bool) -> None:
        await self._hold(worker, resumed)
        if worker.record.status.object_completed:
            await self._describe(worker)
            return
        if worker.source is None:
            await finish_lost(worker)
            await self._describe(worker)
            return
        if resumed and await reconcile(worker):
            await self._describe(worker)
            return
        if worker.record.status != Status.ACTIVE:
            await worker.set_status(Status.ACTIVE)
        try:
            while await worker.grow():
                if await finalize(worker):
                    await self._describe(worker)
                    return
        except FileGone:
            await finish_lost(worker)  # it gave its place up and its file went meanwhile
            await self._describe(worker)

    async def _describe(self, worker: StreamWorker) -> None:
        """Retry a failed metadata step until it succeeds or the agent stops."""
        while not self.stopping.is_set() and worker.record.status.object_completed:
            if worker.record.status != Status.COMPLETED:
                if worker.record.status != Status.S3_COMPLETED:
                    await worker.pause(PERMANENT_ERROR_PAUSE_S)
                    if self.stopping.is_set():
                        return
                    await worker.set_status(Status.S3_COMPLETED)
                await write_metadata(worker)
            if worker.record.status == Status.COMPLETED:
                return

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

    async def _guard_sqlite(self) -> None:
        """A SQLite file deleted under the running agent is noticed within seconds and
        rebuilt from what the agent knows (stream.forgotten)."""
        store = self.store
        while isinstance(store, SqliteStore) and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), SQLITE_CHECK_S)
            if store.file_lost() and not self.stopping.is_set():
                try:
                    workers = list(self.workers.values())
                    await rebuild_lost_sqlite(store, workers, self.completed.values())
                except StreamupError as exc:
                    log.error("checkpoint.rebuild_failed", error=str(exc))

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
        """The local-file action and the free-space guard (after.local_action)."""
        s = self.settings
        policy = Policy(
            action=Action(s.after_upload),
            watch_dir=os.path.abspath(s.watch_dir),
            target_dir=None if s.after_upload_dir is None else os.path.abspath(s.after_upload_dir),
            keep_local_s=s.keep_local_seconds,
            accept_unproven=s.after_upload_unproven == "accept",
            min_free=s.min_free_floor,
            shared=s.redis_url is not None,
            host=host_of(s.agent_id),
            agent_id=s.agent_id,
            lease_ttl_s=s.lease_ttl_seconds,
        )
        return LocalFiles(
            policy, self.store, self.storage,
            records=lambda: self.completed,
            busy=lambda path: path in self.by_path or path in self._starting,
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
