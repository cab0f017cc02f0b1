"""A Redis that forgets everything while the agent is idle (flushed, restarted without
persistence) fails no call: the agent's mark is what tells (stream.forgotten.StoreWatch, a real
redis-server). The records of completed files go back from memory until the store takes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from streamup.checkpoint.base import PresenceMarks
from streamup.checkpoint.memory import MemoryStore
from streamup.checkpoint.redis import PRESENCE_TTL_S, RedisStore, presence_key
from streamup.checkpoint.sqlite import SqliteStore
from streamup.models import CompletedRecord
from streamup.stream.forgotten import CompletedWriteBack, StoreWatch
from tests import servers
from tests.test_checkpoint_contract import completed_of, make_stream

AGENT = "edge-a/1"


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store


def done_files(folder: Path, count: int) -> dict[str, CompletedRecord]:
    records = {}
    for i in range(count):
        path = folder / f"{i}.mp4"
        path.write_bytes(b"x")
        records[str(path)] = completed_of(make_stream(f"s{i}", path=str(path)))
    return records


def watching(store: RedisStore, records: dict[str, CompletedRecord]) -> StoreWatch:
    return StoreWatch(store, AGENT, CompletedWriteBack(store, lambda: records), lambda: [])


def said(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_the_mark_is_left_with_a_ttl_and_renewed_by_every_look(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    assert isinstance(store, PresenceMarks)
    assert not isinstance(MemoryStore(), PresenceMarks)  # nothing to look for there
    assert not await store.still_marked(AGENT)  # never left: nothing renewed
    assert not await raw.exists(presence_key(AGENT))
    await store.mark_present(AGENT)
    await raw.expire(presence_key(AGENT), 5)
    assert await store.still_marked(AGENT)
    assert await raw.ttl(presence_key(AGENT)) > PRESENCE_TTL_S - 5


async def test_an_idle_agent_writes_the_completed_records_back_to_a_flushed_redis(
    store: RedisStore, raw: aioredis.Redis, tmp_path: Path
) -> None:
    records = done_files(tmp_path, 3)
    await store.restore_completed_files(list(records.values()))
    watch = watching(store, records)
    await watch.start()
    with capture_logs() as logs:
        await watch.check()  # nothing lost: nothing said, nothing written
    assert not logs
    await raw.flushall()
    with capture_logs() as logs:
        await watch.check()
    assert [e["files"] for e in said(logs, "checkpoint.completed_restored")] == [3]
    assert len(said(logs, "checkpoint.store_emptied")) == 1
    assert await store.completed_files() == records
    assert await raw.exists(presence_key(AGENT))  # marked again: the next look is quiet
    with capture_logs() as logs:
        await watch.check()
    assert not logs


async def test_a_write_back_the_store_refuses_is_tried_again_at_the_next_look(
    store: RedisStore, raw: aioredis.Redis, tmp_path: Path
) -> None:
    records = done_files(tmp_path, 2)
    watch = watching(store, records)
    await watch.start()
    await raw.flushall()
    await raw.config_set("maxmemory", 1)  # the write is refused: OOM
    try:
        with capture_logs() as logs:
            await watch.check()
        [failed] = said(logs, "checkpoint.completed_restore_failed")
        assert "maxmemory" in str(failed["error"])
        with capture_logs() as logs:
            await watch.check()  # still refused: not said again
        assert [e["log_level"] for e in logs] == ["debug"]  # the mark refused too
    finally:
        await raw.config_set("maxmemory", 0)
    assert await store.completed_files() == {}
    with capture_logs() as logs:
        await watch.check()  # the mark is back already; the records were still owed
    assert not said(logs, "checkpoint.store_emptied")
    assert [e["files"] for e in said(logs, "checkpoint.completed_restored")] == [2]
    assert await store.completed_files() == records


async def test_a_redis_that_is_down_is_not_taken_for_a_flushed_one(tmp_path: Path) -> None:
    records = done_files(tmp_path, 1)
    (tmp_path / "private").mkdir()
    with servers.redis_server(tmp_path / "private") as url:
        own = RedisStore(url)
        await own.open()
        watch = watching(own, records)
        await watch.start()
    try:  # the server is gone: no answer, so no loss
        with capture_logs() as logs:
            await watch.check()
        assert not said(logs, "checkpoint.store_emptied")
        assert not said(logs, "checkpoint.completed_restore_failed")
    finally:
        await own.close()


async def test_a_deleted_sqlite_file_is_rebuilt_by_the_same_watch(tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    records = done_files(folder, 2)
    sqlite = SqliteStore(tmp_path / "state")
    await sqlite.open()
    try:
        watch = StoreWatch(sqlite, AGENT, CompletedWriteBack(sqlite, lambda: records), lambda: [])
        await watch.start()
        await watch.check()  # the file is there: nothing to do
        assert await sqlite.completed_files() == {}
        (tmp_path / "state" / "streamup.db").unlink()
        with capture_logs() as logs:
            await watch.check()
        [rebuilt] = said(logs, "checkpoint.store_rebuilt")
        assert rebuilt["completed_files"] == 2
        assert await sqlite.completed_files() == records
    finally:
        await sqlite.close()
