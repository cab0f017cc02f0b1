"""The delivery loop in-process, against real parts: the SQLite (or Redis) outbox, a real HTTP
receiver, real hook processes. A fast retry policy stands in for the minute-long backoff."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamup.after.delivery import Dispatcher, Sink
from streamup.after.events import encode_event
from streamup.after.hooks import CommandSink
from streamup.after.schedule import RetryPolicy
from streamup.after.webhook import WebhookSink
from streamup.checkpoint.base import CheckpointStore
from streamup.checkpoint.redis import RedisStore
from streamup.checkpoint.sqlite import SqliteStore
from streamup.models import (
    CompletedRecord,
    DeliveryStatus,
    FileIdentity,
    OutboxEvent,
    Status,
    StreamRecord,
)
from streamup.retry import Backoff
from tests.receiver import Receiver

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FAST = RetryPolicy(backoff=Backoff(first_s=0.05, factor=2.0, cap_s=0.4))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "state")
    await opened.open()
    yield opened
    await opened.close()


def event(stream_id: str, kind: str, host: str = "edge-a") -> OutboxEvent:
    body = encode_event({"id": f"{stream_id}-{kind}", "type": kind, "stream_id": stream_id})
    return OutboxEvent(f"{stream_id}-{kind}", kind, stream_id, host, T0, body)


async def tell(store: CheckpointStore, *events: OutboxEvent) -> None:
    """Write each event as a finish of its stream would (a finish may be repeated)."""
    for item in events:
        stream = StreamRecord(
            stream_id=item.stream_id, path=f"/w/{item.stream_id}.mp4",
            relative_path=f"{item.stream_id}.mp4", bucket="b", key=f"k/{item.stream_id}.mp4",
            status=Status.COMPLETED, identity=FileIdentity(1, 2), part_size_bytes=5 << 20,
            part_size_fixed=False, started_at=T0, last_activity_at=T0,
        )  # fmt: skip
        record = CompletedRecord(
            item.stream_id, stream.path, "b", stream.key, Status.COMPLETED,
            stream.identity, 0, 0, T0,
        )  # fmt: skip
        await store.save_stream(stream)
        await store.finish_stream(stream, record, item)


class Running:
    """A dispatcher running in the background of a test."""

    def __init__(self, store: CheckpointStore, sinks: list[Sink], **options: object) -> None:
        self.stopping = asyncio.Event()
        options.setdefault("host", "edge-a")
        options.setdefault("shared", False)
        options.setdefault("policy", FAST)
        self.dispatcher = Dispatcher(store, sinks, stopping=self.stopping, **options)  # type: ignore[arg-type]
        self.task = asyncio.create_task(self.dispatcher.run())

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 10)


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def webhook(receiver: Receiver) -> WebhookSink:
    return WebhookSink(receiver.url, "whsec", timeout_s=5)


async def test_each_streams_events_go_out_in_order_through_an_outage(
    store: SqliteStore, receiver: Receiver
) -> None:
    kinds = ["stream.completed", "file.moved", "file.deleted"]
    await tell(store, *[event(s, kind) for kind in kinds for s in ("A", "B", "C")])
    running = Running(store, [webhook(receiver)])  # nothing listens yet

    async def all_failing() -> bool:
        entries = await store.outbox()
        states = [e.deliveries.get("webhook") for e in entries]
        return sum(1 for s in states if s and s.status is DeliveryStatus.RETRYING) == 3

    await until(all_failing, "the three heads to fail")  # one per stream, no more
    await asyncio.sleep(1.0)
    entries = await store.outbox()
    tried = {e.event.event_id for e in entries if e.deliveries}
    assert tried == {"A-stream.completed", "B-stream.completed", "C-stream.completed"}
    receiver.start()
    await until(lambda: _empty(store), "the outbox to drain")
    await running.stop()
    requests = receiver.snapshot()
    assert all(r.status == 200 for r in requests) and len(requests) == 9
    for stream_id in ("A", "B", "C"):
        sent = [r.event_id for r in requests if r.json()["stream_id"] == stream_id]
        assert sent == [f"{stream_id}-{kind}" for kind in kinds]


async def test_a_refused_event_is_kept_undeliverable_without_holding_back_others(
    store: SqliteStore, receiver: Receiver
) -> None:
    receiver.rule = lambda _seen, body: 404 if b'"A-stream.completed"' in body else 200
    receiver.start()
    await tell(store, event("A", "stream.completed"), event("A", "file.deleted"))
    await tell(store, event("B", "stream.completed"))
    running = Running(store, [webhook(receiver)])

    async def settled() -> bool:
        return len(await store.outbox()) == 1 and len(receiver.accepted()) == 2

    await until(settled, "two deliveries and one refusal")
    await asyncio.sleep(0.5)  # nothing more happens to it in this run
    await running.stop()
    [entry] = await store.outbox()
    state = entry.deliveries["webhook"]
    assert entry.event.event_id == "A-stream.completed"
    assert (state.status, state.attempts) == (DeliveryStatus.UNDELIVERABLE, 5)
    assert state.last_error == "HTTP 404 Not Found: <html>try later</html>"
    assert [r.status for r in receiver.snapshot() if r.event_id == entry.event.event_id] == [
        404
    ] * 5
    # The receiver is fixed; the next start tries undeliverable events again.
    receiver.rule = lambda _seen, _body: 200
    again = Running(store, [webhook(receiver)])
    await until(lambda: _empty(store), "the outbox to empty after a restart")
    await again.stop()
    assert [r.event_id for r in receiver.accepted()].count("A-stream.completed") == 1


HOOK = """
import pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
sys.exit(1 if n == 1 else 0)
"""


async def test_an_event_leaves_the_outbox_only_once_every_sink_has_it(
    store: SqliteStore, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    (tmp_path / "hook.py").write_text(HOOK)
    counter = tmp_path / "runs"
    hook = CommandSink([sys.executable, str(tmp_path / "hook.py"), str(counter)], timeout_s=10)
    await tell(store, event("A", "stream.completed"), event("B", "stream.failed"))
    running = Running(store, [hook, webhook(receiver)])

    async def webhook_done_hook_failed() -> bool:
        entries = {e.event.event_id: e for e in await store.outbox()}
        entry = entries.get("A-stream.completed")
        return entry is not None and {n: s.status for n, s in entry.deliveries.items()} == {
            "webhook": DeliveryStatus.DELIVERED,
            "command": DeliveryStatus.RETRYING,
        }

    await until(webhook_done_hook_failed, "the webhook to have it and the hook to fail once")
    await until(lambda: _empty(store), "the outbox to empty")
    await running.stop()
    assert counter.read_text() == "2"  # the hook does not take stream.failed: 2 runs for A
    assert sorted(r.event_id for r in receiver.snapshot()) == [
        "A-stream.completed", "B-stream.failed",
    ]  # fmt: skip


async def test_with_no_sink_an_event_leaves_the_outbox_at_once(store: SqliteStore) -> None:
    await tell(store, event("A", "stream.completed"))
    running = Running(store, [])
    await until(lambda: _empty(store), "the outbox to empty")
    await running.stop()


async def test_a_shared_store_delivers_only_this_hosts_events(
    redis_url: str, receiver: Receiver
) -> None:
    receiver.start()
    store = RedisStore(redis_url)
    await store.open()
    try:
        await tell(store, event("A", "stream.completed", host="edge-a"))
        await tell(store, event("B", "stream.completed", host="edge-b"))
        running = Running(store, [webhook(receiver)], shared=True)
        await until(lambda: _count(store, 1), "this host's event")
        await asyncio.sleep(0.5)
        await running.stop()
        [left] = await store.outbox()
        assert (left.event.host, left.deliveries) == ("edge-b", {})  # not touched
        assert [r.event_id for r in receiver.snapshot()] == ["A-stream.completed"]
    finally:
        await store.close()


SLEEPER = """
import os, pathlib, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
time.sleep(300)
"""


async def test_stopping_kills_a_hook_in_flight_and_keeps_its_event(
    store: SqliteStore, tmp_path: Path
) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    pids = tmp_path / "pids"
    hook = CommandSink([sys.executable, str(tmp_path / "sleeper.py"), str(pids)], timeout_s=60)
    await tell(store, event("A", "stream.completed"))
    running = Running(store, [hook], grace_s=0.3)
    await until(lambda: _exists(pids), "the hook to start")
    started = time.monotonic()
    await running.stop()
    assert time.monotonic() - started < 3
    # SIGKILL went to the whole group; the kernel takes a moment to tear the child down on a
    # busy machine, so each one is given two seconds to go (a surviving one fails the test).
    for pid in map(int, pids.read_text().split()):
        await until(_gone(pid), f"hook process {pid} to die", deadline_s=2)
    [entry] = await store.outbox()
    assert entry.deliveries == {}  # never told: it runs again at the next start


async def _empty(store: CheckpointStore) -> bool:
    return not await store.outbox()


async def _count(store: CheckpointStore, left: int) -> bool:
    return len(await store.outbox()) == left


async def _exists(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


def _gone(pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not _alive(pid)

    return check


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
