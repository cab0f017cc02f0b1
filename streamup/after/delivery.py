"""Delivering the outbox: every event to every sink that takes it, at least once, in order.

An event enters the outbox in the step that finishes its stream (`finish_stream`) and leaves it
only once every configured sink has it, so a crash at any instant delivers it after the restart,
under the same id. Each sink is its own queue: per stream, one event at a time, oldest first;
across streams up to the sink's `concurrency` at once. A failed attempt is recorded in the store
(attempts, last error: `status` shows them) and tried again after a capped, jittered backoff
(`after.schedule`), per event: a receiver that is down hears about each waiting event about
once a minute, at most `concurrency` at a time. When one gets through after transient
failures, the others that failed for the same reason go at once instead of waiting out their
backoff: a queue drains as soon as its receiver is back.

The store is reached through the narrow `OutboxStore`; any checkpoint backend is one. With a
shared store (Redis) an agent delivers only the events its own host wrote: a command hook must
run where the file is, and two agents must not both send everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Protocol

import structlog

from streamup import metrics
from streamup.after.hooks import CommandSink
from streamup.after.schedule import Attempt, Outcome, Pending, RetryPolicy, pick_ready
from streamup.after.webhook import WebhookSink
from streamup.errors import StreamupError
from streamup.faults import crash_point
from streamup.models import DeliveryState, DeliveryStatus, OutboxEntry, OutboxEvent
from streamup.retry import Backoff, retrying
from streamup.settings import Settings

log = structlog.get_logger("streamup")

# The outbox is read again after every completion (`poke`), and this often anyway.
RELOAD_INTERVAL_S = 30.0
_STORE_BACKOFF = Backoff(first_s=0.5, factor=2.0, cap_s=10.0)


class OutboxStore(Protocol):
    """What delivery needs of the checkpoint store (every backend has it)."""

    async def outbox(self) -> list[OutboxEntry]: ...

    async def set_delivery(self, event_id: str, sink: str, state: DeliveryState) -> None: ...

    async def remove_event(self, event_id: str) -> None: ...


class Sink(Protocol):
    """Somewhere events go: the webhook, the command hook."""

    name: str
    concurrency: int

    def accepts(self, event_type: str) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def deliver(self, event: OutboxEvent) -> Attempt:
        """One attempt; trouble is an Attempt, not an exception."""
        ...


Key = tuple[str, str]  # (event id, sink name)


def build_sinks(settings: Settings) -> list[Sink]:
    """The sinks the settings ask for (none: events leave the outbox as soon as they enter)."""
    sinks: list[Sink] = []
    argv = settings.on_complete_argv
    if argv is not None:
        sinks.append(CommandSink(argv, timeout_s=settings.hook_timeout_seconds))
    if settings.webhook_url is not None:
        secret = settings.webhook_secret
        sinks.append(
            WebhookSink(
                settings.webhook_url,
                None if secret is None else secret.get_secret_value(),
                timeout_s=settings.hook_timeout_seconds,
            )
        )
    return sinks


class Dispatcher:
    """The delivery loop of one agent; `run` until `stopping` is set."""

    def __init__(
        self,
        store: OutboxStore,
        sinks: Sequence[Sink],
        *,
        host: str,
        shared: bool,
        stopping: asyncio.Event,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.store = store
        self.sinks = list(sinks)
        self.host = host
        self.shared = shared
        self.stopping = stopping
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._rng = rng
        self.grace_s = grace_s  # on shutdown, attempts in flight may end within this long
        self._entries: dict[str, OutboxEntry] = {}  # this agent's events, by id, oldest first
        self._due: dict[Key, float] = {}
        self._tries: dict[Key, int] = {}  # attempts in this run
        self._rejections: dict[Key, int] = {}
        self._given_up: set[Key] = set()  # undeliverable in this run (retried at the next start)
        self._tasks: dict[Key, asyncio.Task[None]] = {}  # sink "" is an event's removal
        self._sink_failures: dict[str, int] = {}  # transient failures since its last delivery
        self._writes = 0  # store writes so far: a read that overlapped one may be stale
        self._reload_at = 0.0
        self._wake = asyncio.Event()

    @classmethod
    def for_agent(
        cls, store: OutboxStore, settings: Settings, stopping: asyncio.Event, *, host: str
    ) -> Dispatcher:
        """The agent's dispatcher: the sinks its settings name, its host's share of the outbox."""
        return cls(
            store,
            build_sinks(settings),
            host=host,
            shared=settings.redis_url is not None,
            stopping=stopping,
            grace_s=settings.shutdown_grace_seconds,
        )

    def poke(self) -> None:
        """An event may have entered the outbox: read it again now."""
        self._reload_at = 0.0
        self._wake.set()

    async def run(self) -> None:
        for sink in self.sinks:
            await sink.open()
        stop = asyncio.create_task(self.stopping.wait())
        stop.add_done_callback(lambda _task: self._wake.set())
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                if self._clock() >= self._reload_at:
                    await self._reload()
                wake_at = min(self._reload_at, self._dispatch())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - self._clock()))
            if self._tasks:
                # A POST awaiting its answer, a hook half-way: let them end (or be killed).
                await asyncio.wait(list(self._tasks.values()), timeout=self.grace_s)
        finally:
            stop.cancel()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    await sink.close()

    # ------------------------------------------------------------- the outbox

    async def _reload(self) -> None:
        before = self._writes
        try:
            entries = await self.store.outbox()
        except StreamupError as exc:
            log.warning("events.outbox_unreadable", error=str(exc), retry_in_s=5.0)
            self._reload_at = self._clock() + 5.0
            return
        if self._writes != before:
            return  # a delivery was recorded while this was read: read again, straight away
        self._entries = {
            e.event.event_id: e for e in entries if not self.shared or e.event.host == self.host
        }
        self._reload_at = self._clock() + RELOAD_INTERVAL_S
        metrics.EVENTS_WAITING.set(len(self._entries))

    def _dispatch(self) -> float:
        """Start what is due; return when to look again."""
        now = self._clock()
        wake = now + RELOAD_INTERVAL_S
        for entry in list(self._entries.values()):
            if self._needs(entry) == [] and (entry.event.event_id, "") not in self._tasks:
                self._start((entry.event.event_id, ""), self._remove(entry.event.event_id))
        for sink in self.sinks:
            pending = [
                Pending(e.event.event_id, e.event.stream_id, e.seq, self._due.get(key, 0.0))
                for e in self._entries.values()
                if sink in self._needs(e)
                and (key := (e.event.event_id, sink.name)) not in self._given_up
            ]
            busy = {event_id for event_id, name in self._tasks if name == sink.name}
            limit = sink.concurrency - len(busy)
            ready, due = pick_ready(pending, busy=busy, now_s=now, limit=limit)
            if due is not None:
                wake = min(wake, due)
            for item in ready:
                entry = self._entries[item.event_id]
                self._start((item.event_id, sink.name), self._attempt(entry, sink))
        return wake

    def _needs(self, entry: OutboxEntry) -> list[Sink]:
        """The sinks that take this event and do not have it yet (undeliverable ones included:
        the event stays while any sink lacks it)."""
        return [
            sink
            for sink in self.sinks
            if sink.accepts(entry.event.event_type) and _lacks(entry, sink.name)
        ]

    def _start(self, key: Key, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.pop(key, None)
            self._wake.set()
            if not finished.cancelled() and finished.exception() is not None:
                log.error("events.delivery_bug", exc_info=finished.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------- one attempt

    async def _attempt(self, entry: OutboxEntry, sink: Sink) -> None:
        event, key = entry.event, (entry.event.event_id, sink.name)
        bound = log.bind(
            event_id=event.event_id,
            type=event.event_type,
            stream_id=event.stream_id,
            sink=sink.name,
        )
        crash_point("before_event_delivery")
        try:
            attempt = await sink.deliver(event)
        except Exception as exc:  # a bug in a sink must not stop the others
            bound.exception("event.sink_failed")
            attempt = Attempt(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc}")
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        previous = entry.deliveries.get(sink.name)
        total = (previous.attempts if previous is not None else 0) + 1
        if attempt.outcome is Outcome.DELIVERED:
            crash_point("after_event_delivery")
            metrics.EVENTS_DELIVERED.labels(sink=sink.name).inc()
            bound.info("event.delivered", attempts=total)
            self._sink_recovered(sink.name)
            await self._record(entry, sink.name, DeliveryState(DeliveryStatus.DELIVERED, total))
            return
        if attempt.outcome is Outcome.REJECTED:
            self._rejections[key] = self._rejections.get(key, 0) + 1
        else:
            self._sink_failed(sink.name)
        delay = self.policy.delay_s(attempt, tries, self._rejections.get(key, 0), self._rng)
        if delay is None:
            self._given_up.add(key)
            metrics.EVENTS_UNDELIVERABLE.labels(sink=sink.name).inc()
            bound.error("event.undeliverable", attempts=total, error=attempt.error)
            state = DeliveryState(DeliveryStatus.UNDELIVERABLE, total, attempt.error)
        else:
            self._due[key] = self._clock() + delay
            metrics.EVENT_RETRIES.labels(sink=sink.name).inc()
            bound.warning(
                "event.retrying", attempts=total, error=attempt.error, retry_in_s=round(delay, 2)
            )
            state = DeliveryState(DeliveryStatus.RETRYING, total, attempt.error)
        await self._record(entry, sink.name, state)

    async def _record(self, entry: OutboxEntry, sink: str, state: DeliveryState) -> None:
        """Write a sink's progress; when every sink has the event, it leaves the outbox."""
        event_id = entry.event.event_id
        current = self._entries.get(event_id, entry)
        updated = replace(current, deliveries={**current.deliveries, sink: state})
        if not self._needs(updated):
            await self._remove(event_id)
            return
        await self._store(lambda: self.store.set_delivery(event_id, sink, state))
        if event_id in self._entries:
            self._entries[event_id] = replace(
                self._entries[event_id],
                deliveries={**self._entries[event_id].deliveries, sink: state},
            )

    async def _remove(self, event_id: str) -> None:
        await self._store(lambda: self.store.remove_event(event_id))
        self._entries.pop(event_id, None)
        for sink in self.sinks:  # what this run knew of it goes with it
            key = (event_id, sink.name)
            self._due.pop(key, None)
            self._tries.pop(key, None)
            self._rejections.pop(key, None)
            self._given_up.discard(key)
        metrics.EVENTS_WAITING.set(len(self._entries))

    async def _store(self, call: Callable[[], Awaitable[None]]) -> None:
        def note(exc: StreamupError, attempt: int, delay_s: float) -> None:
            if attempt == 1 or attempt % 10 == 0:
                log.warning("events.store_unavailable", error=str(exc), attempts=attempt)

        try:
            await retrying(call, backoff=_STORE_BACKOFF, on_retry=note)
        finally:
            self._writes += 1

    # ------------------------------------------------------------- sink health

    def _sink_failed(self, name: str) -> None:
        self._sink_failures[name] = self._sink_failures.get(name, 0) + 1

    def _sink_recovered(self, name: str) -> None:
        if not self._sink_failures.pop(name, 0):
            return
        # It is back after an outage: every event that failed for lack of a receiver goes now,
        # not after its own backoff (up to a minute). Refused ones (4xx) keep theirs.
        for key in [k for k in self._due if k[1] == name and not self._rejections.get(k)]:
            del self._due[key]


def _lacks(entry: OutboxEntry, sink: str) -> bool:
    state = entry.deliveries.get(sink)
    return state is None or state.status is not DeliveryStatus.DELIVERED
