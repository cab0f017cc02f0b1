"""One contract suite for every checkpoint backend: SQLite (a real file), Redis (a real
redis-server) and the in-memory fake; then what only one backend promises (Redis' key schema,
SQLite's STATE_DIR lock)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from streamup.checkpoint.base import CheckpointStore
from streamup.checkpoint.codec import completed_to_json
from streamup.checkpoint.memory import MemoryStore
from streamup.checkpoint.redis import RedisStore
from streamup.checkpoint.redis_parts import parse_part_value
from streamup.checkpoint.sqlite import SqliteStore
from streamup.errors import CheckpointCorrupt, CheckpointError, LeaseLost
from streamup.models import (
    Claim,
    CompletedRecord,
    DeliveryState,
    DeliveryStatus,
    EndReason,
    Extension,
    FileIdentity,
    OutboxEvent,
    PartRecord,
    Proof,
    Status,
    StreamRecord,
    iso,
)
from tests import servers

T = TypeVar("T")

MiB = 1024 * 1024
HISTORY_LIMIT = 3
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
UNFINISHED = [s for s in Status if not s.is_final]


def make_stream(stream_id: str = "s1", **changes: object) -> StreamRecord:
    stream = StreamRecord(
        stream_id=stream_id,
        path=f"/watch/cam/{stream_id}.mp4",
        relative_path=f"cam/{stream_id}.mp4",
        bucket="videos",
        key=f"recordings/cam/{stream_id}.mp4",
        status=Status.ACTIVE,
        identity=FileIdentity(device=2049, inode=1_234_567),
        part_size_bytes=8 * MiB,
        part_size_fixed=False,
        started_at=T0,
        last_activity_at=T0,
    )
    return stream.evolve(**changes)


def make_part(number: int, *, size_bytes: int = 8 * MiB, etag: str = "") -> PartRecord:
    return PartRecord(
        number=number,
        offset_bytes=(number - 1) * 8 * MiB,
        size_bytes=size_bytes,
        etag=etag or f'"{number:032x}"',  # S3 returns the ETag with its quotes
        md5_hex=f"{number:032x}",
        uploaded_at=T0 + timedelta(seconds=number, microseconds=number),
        crc32c_hex=f"{number:08x}",
    )


def completed_of(stream: StreamRecord, *, status: Status = Status.COMPLETED) -> CompletedRecord:
    return CompletedRecord(
        stream_id=stream.stream_id,
        path=stream.path,
        bucket=stream.bucket,
        key=stream.key,
        status=status,
        identity=stream.identity,
        size_bytes=stream.size_bytes,
        mtime_ns=stream.mtime_ns,
        completed_at=T0 + timedelta(minutes=5),
        end_reason=stream.end_reason,
    )


async def finish(store: CheckpointStore, stream_id: str, **changes: object) -> CompletedRecord:
    stream = make_stream(stream_id, **changes)
    await store.save_stream(stream)
    record = completed_of(stream)
    await store.finish_stream(stream, record)
    return record


@dataclass
class Backend:
    name: str
    make: Callable[[], CheckpointStore]  # a new handle on the same stored data


@pytest.fixture(params=["sqlite", "redis", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        state_dir = tmp_path / "state"
        return Backend("sqlite", lambda: SqliteStore(state_dir, history_limit=HISTORY_LIMIT))
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return Backend("redis", lambda: RedisStore(url, history_limit=HISTORY_LIMIT))
    memory = MemoryStore(history_limit=HISTORY_LIMIT)  # its data lives in the object
    return Backend("memory", lambda: memory)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[CheckpointStore]:
    opened = backend.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- the contract -------------------------------------------------------------------------------


async def test_every_stream_field_round_trips(store: CheckpointStore) -> None:
    stream = make_stream(
        status=Status.FAILED_METADATA_UPLOAD,
        identity=FileIdentity(device=2**63 + 5, inode=2**64 - 1),  # beyond SQLite's signed range
        part_size_bytes=16 * MiB,
        part_size_fixed=True,
        started_at=datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        last_activity_at=T0 + timedelta(hours=1),
        upload_id="2~abc:def/ghi",
        size_bytes=123_456_789,
        mtime_ns=1_714_564_800_123_456_789,
        uploaded_bytes=96 * MiB,
        reuploaded_parts=2,
        sha256_hex="ab" * 32,
        completed_at=T0 + timedelta(hours=2),
        end_reason=EndReason.FILE_REPLACED,
        error="metadata upload failed: AccessDenied: no",
        host="edge-07.example",
        key_collision_of="recordings/cam/s1.mp4",
        bytes_sent=41 * MiB + 3,
        rebuild='{"stale_upload_id":"u0","shift_bytes":902}',
    )
    await store.save_stream(stream)
    loaded = await store.load_stream("s1")
    assert loaded == stream
    assert loaded is not None and loaded.started_at.tzinfo == UTC


async def test_none_values_and_defaults_round_trip(store: CheckpointStore) -> None:
    stream = make_stream()
    await store.save_stream(stream)
    loaded = await store.load_stream("s1")
    assert loaded == stream
    assert loaded is not None
    assert (loaded.upload_id, loaded.sha256_hex, loaded.completed_at, loaded.error) == (
        None,
        None,
        None,
        None,
    )


async def test_save_stream_replaces_the_whole_record(store: CheckpointStore) -> None:
    await store.save_stream(make_stream(error="boom", upload_id="u1", sha256_hex="cd" * 32))
    replacement = make_stream(status=Status.PENDING_COMPLETION, upload_id="u2")
    await store.save_stream(replacement)
    assert await store.load_stream("s1") == replacement


@pytest.mark.parametrize("proof", [*Proof, None], ids=[*Proof, "none-recorded"])
async def test_a_part_round_trips_with_how_it_was_proven(
    store: CheckpointStore, proof: Proof | None
) -> None:
    await store.save_stream(make_stream())
    part = dataclasses.replace(make_part(1), proof=proof)
    await store.record_part("s1", part, 8 * MiB, T0)
    copied = dataclasses.replace(make_part(2), copied=True, proof=proof)
    await store.record_part("s1", copied, 16 * MiB, T0)
    assert await store.load_parts("s1") == {1: part, 2: copied}


async def test_an_extending_stream_and_its_copied_parts_round_trip(
    store: CheckpointStore,
) -> None:
    extends = Extension(stream_id="s0", size_bytes=12 * MiB, etag='"ab-2"', count=2)
    stream = make_stream(extends=extends)
    await store.save_stream(stream)
    assert await store.load_stream("s1") == stream
    copied = dataclasses.replace(make_part(1), copied=True)
    await store.record_part("s1", copied, 8 * MiB, T0)
    await store.record_part("s1", make_part(2), 16 * MiB, T0)
    assert await store.load_parts("s1") == {1: copied, 2: make_part(2)}
    record = dataclasses.replace(completed_of(stream), extensions=2)
    await store.finish_stream(stream, record)
    assert await store.completed_file(stream.path) == record
    assert await store.recent_completions(1) == [record]


async def test_unknown_stream_loads_as_none_with_no_parts(store: CheckpointStore) -> None:
    assert await store.load_stream("nope") is None
    assert await store.load_parts("nope") == {}


async def test_record_part_then_load_parts_returns_exact_records(store: CheckpointStore) -> None:
    await store.save_stream(make_stream())
    parts = [make_part(1), make_part(2, etag='"0123456789abcdef0123456789abcdef-2"'), make_part(3)]
    for index, part in enumerate(parts, start=1):
        await store.record_part("s1", part, index * 8 * MiB, T0 + timedelta(seconds=10 * index))
    assert await store.load_parts("s1") == {part.number: part for part in parts}
    loaded = await store.load_stream("s1")
    assert loaded is not None
    assert loaded.uploaded_bytes == 24 * MiB
    assert loaded.last_activity_at == T0 + timedelta(seconds=30)


async def test_record_part_replaces_a_part_with_the_same_number(store: CheckpointStore) -> None:
    await store.save_stream(make_stream())
    await store.record_part("s1", make_part(1), 8 * MiB, T0)
    await store.record_part("s1", make_part(2), 16 * MiB, T0)
    again = PartRecord(2, 8 * MiB, 6 * MiB, '"feed"', "feed" * 8, T0 + timedelta(days=1))
    await store.record_part("s1", again, 14 * MiB, T0 + timedelta(days=1))
    assert await store.load_parts("s1") == {1: make_part(1), 2: again}


async def test_remove_parts_drops_them_and_sets_progress(store: CheckpointStore) -> None:
    await store.save_stream(make_stream())
    for number in (1, 2, 3):
        await store.record_part("s1", make_part(number), number * 8 * MiB, T0)
    await store.remove_parts("s1", iter([2, 3, 9]), 8 * MiB)  # 9 was never there
    assert await store.load_parts("s1") == {1: make_part(1)}
    loaded = await store.load_stream("s1")
    assert loaded is not None and loaded.uploaded_bytes == 8 * MiB


async def test_progress_of_an_unsaved_stream_is_refused(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint record"):
        await store.record_part("ghost", make_part(1), 8 * MiB, T0)
    with pytest.raises(CheckpointError, match="no checkpoint record"):
        await store.remove_parts("ghost", [1], 0)
    assert await store.load_stream("ghost") is None
    assert await store.load_parts("ghost") == {}


async def test_unfinished_streams_are_every_resumable_status_oldest_first(
    store: CheckpointStore,
) -> None:
    expected: list[StreamRecord] = []
    for index, status in enumerate(reversed(UNFINISHED)):  # saved newest first
        started_at = T0 - timedelta(minutes=index)
        stream = make_stream(f"u{index}", status=status, started_at=started_at)
        await store.save_stream(stream)
        expected.insert(0, stream)
    await store.save_stream(make_stream("done", status=Status.COMPLETED))
    await store.save_stream(make_stream("empty", status=Status.ABORTED_NO_PARTS))
    await finish(store, "finished", status=Status.ACTIVE)
    assert await store.unfinished_streams() == expected
    assert {s.status for s in expected} >= {s for s in Status if s.is_failed}


async def test_finish_stream_removes_working_state_and_keeps_the_record(
    store: CheckpointStore,
) -> None:
    stream = make_stream(status=Status.S3_COMPLETED, size_bytes=20 * MiB, mtime_ns=42)
    await store.save_stream(stream)
    await store.record_part("s1", make_part(1), 8 * MiB, T0)
    record = completed_of(stream)
    await store.finish_stream(stream.evolve(status=Status.COMPLETED), record)
    assert await store.load_stream("s1") is None
    assert await store.load_parts("s1") == {}
    assert await store.unfinished_streams() == []
    assert await store.completed_files() == {stream.path: record}
    assert await store.recent_completions(10) == [record]


async def test_aborted_stream_finishes_like_a_completed_one(store: CheckpointStore) -> None:
    stream = make_stream(status=Status.ABORTED_NO_PARTS)
    await store.save_stream(stream)
    record = completed_of(stream, status=Status.ABORTED_NO_PARTS)
    await store.finish_stream(stream, record)
    assert await store.load_stream("s1") is None
    assert await store.completed_files() == {stream.path: record}
    assert await store.recent_completions(10) == [record]


async def test_recent_completions_are_newest_first_and_trimmed(store: CheckpointStore) -> None:
    records = [await finish(store, f"s{index}") for index in range(5)]
    newest_first = records[::-1][:HISTORY_LIMIT]
    assert await store.recent_completions(10) == newest_first
    assert await store.recent_completions(2) == newest_first[:2]
    assert await store.recent_completions(0) == []
    # The per-file records are not history: each lives until its file is forgotten.
    assert set(await store.completed_files()) == {r.path for r in records}


async def test_finishing_a_stream_again_keeps_one_history_entry(store: CheckpointStore) -> None:
    first = await finish(store, "s1")
    await finish(store, "s2")
    again = await finish(store, "s1")
    assert first == again
    assert [r.stream_id for r in await store.recent_completions(10)] == ["s1", "s2"]


async def test_a_path_keeps_its_latest_completed_record(store: CheckpointStore) -> None:
    await finish(store, "s1", path="/watch/same.mp4")
    latest = await finish(store, "s2", path="/watch/same.mp4")
    assert await store.completed_files() == {"/watch/same.mp4": latest}


async def test_forget_completed_file_keeps_the_history(store: CheckpointStore) -> None:
    record = await finish(store, "s1")
    await store.forget_completed_file(record.path)
    await store.forget_completed_file("/never/there.mp4")
    assert await store.completed_files() == {}
    assert await store.recent_completions(10) == [record]


PROVEN = {
    "ctime_ns": 1_714_564_800_123_456_789,
    "sha256_hex": "ab" * 32,
    "object_etag": '"0123456789abcdef0123456789abcdef-2"',
    "object_crc32c": "AAAAAA==",
    "proof": "etag_compared",
    "host": "edge-a",
}


async def test_the_local_action_fields_of_a_completed_record_round_trip(
    store: CheckpointStore,
) -> None:
    stream = make_stream("p1")
    await store.save_stream(stream)
    record = dataclasses.replace(completed_of(stream), **PROVEN)  # type: ignore[arg-type]
    await store.finish_stream(stream, record)
    assert await store.completed_file(stream.path) == record
    assert (await store.completed_files())[stream.path] == record
    assert await store.recent_completions(1) == [record]
    assert await store.completed_file("/watch/nothing.mp4") is None


async def test_update_completed_file_writes_only_over_the_same_streams_record(
    store: CheckpointStore,
) -> None:
    record = await finish(store, "u1")
    intent = dataclasses.replace(record, local_action="move", local_target="/done/cam/u1.mp4")
    assert await store.update_completed_file(intent)
    assert await store.completed_file(record.path) == intent
    other = dataclasses.replace(intent, stream_id="someone-else", local_action="delete")
    assert not await store.update_completed_file(other)  # the path holds u1's record
    assert await store.completed_file(record.path) == intent
    missing = dataclasses.replace(intent, path="/watch/cam/none.mp4")
    assert not await store.update_completed_file(missing)  # no record: nothing is created
    assert await store.completed_file(missing.path) is None
    cleared = dataclasses.replace(intent, local_action="", local_target="")
    assert await store.update_completed_file(cleared)
    assert await store.completed_file(record.path) == cleared


async def test_forget_completed_file_of_a_stream_spares_another_streams_record(
    store: CheckpointStore,
) -> None:
    record = await finish(store, "f1")
    await store.forget_completed_file(record.path, "another-stream")
    assert await store.completed_file(record.path) == record
    await store.forget_completed_file(record.path, "f1")
    assert await store.completed_file(record.path) is None


async def test_finish_refuses_a_record_of_another_stream(store: CheckpointStore) -> None:
    stream = make_stream()
    await store.save_stream(stream)
    with pytest.raises(CheckpointError, match="record of stream other"):
        await store.finish_stream(stream, completed_of(make_stream("other")))
    assert await store.load_stream("s1") == stream


async def test_ping_answers(store: CheckpointStore) -> None:
    await store.ping()


async def test_data_survives_closing_and_reopening(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    try:
        stream = make_stream(upload_id="u1")
        await first.save_stream(stream)
        await first.record_part("s1", make_part(1), 8 * MiB, T0)
        record = await finish(first, "s0")
    finally:
        await first.close()
    second = backend.make()
    await second.open()
    try:
        assert await second.load_stream("s1") == stream.evolve(uploaded_bytes=8 * MiB)
        assert await second.load_parts("s1") == {1: make_part(1)}
        assert await second.completed_files() == {record.path: record}
        assert await second.recent_completions(10) == [record]
    finally:
        await second.close()


async def test_empty_optional_strings_read_back_as_none(store: CheckpointStore) -> None:
    await store.save_stream(make_stream(upload_id="", sha256_hex="", error=""))
    assert await store.load_stream("s1") == make_stream()


async def test_concurrent_part_checkpoints_of_one_stream_all_land(store: CheckpointStore) -> None:
    await store.save_stream(make_stream())
    parts = [make_part(number) for number in range(1, 21)]
    await asyncio.gather(*(store.record_part("s1", part, 8 * MiB, T0) for part in parts))
    assert await store.load_parts("s1") == {part.number: part for part in parts}


# -- claims: one stream per file, however many agents find it -----------------------------------


async def test_claim_registers_a_new_file_then_reports_it_existing(
    store: CheckpointStore,
) -> None:
    first = make_stream("s1", path="/watch/cam.mp4", host="edge-a")
    assert await store.claim_stream(first) == (Claim.NEW, "s1")
    assert await store.load_stream("s1") == first
    # Another agent finds the same file (its own device number: inode only counts).
    second = make_stream("s2", path="/watch/cam.mp4", identity=FileIdentity(77, 1_234_567))
    assert await store.claim_stream(second) == (Claim.EXISTING, "s1")
    assert await store.load_stream("s2") is None
    assert await store.unfinished_streams() == [first]


async def test_a_retried_claim_is_new_again_without_a_second_stream(
    store: CheckpointStore,
) -> None:
    stream = make_stream("s1", path="/watch/cam.mp4")
    assert await store.claim_stream(stream) == (Claim.NEW, "s1")
    assert await store.claim_stream(stream) == (Claim.NEW, "s1")
    assert await store.unfinished_streams() == [stream]


async def test_a_claim_with_an_owner_takes_the_lease_in_the_same_step(
    store: CheckpointStore,
) -> None:
    stream = make_stream("s1", path="/watch/cam.mp4")
    assert await store.claim_stream(stream, owner="agent-a", ttl_s=30.0) == (Claim.NEW, "s1")
    assert await store.lease_owner("s1") == "agent-a"
    # Retried (its reply was lost): the same stream, the lease still the finder's.
    assert await store.claim_stream(stream, owner="agent-a", ttl_s=30.0) == (Claim.NEW, "s1")
    assert await store.lease_owner("s1") == "agent-a"
    await store.record_part("s1", make_part(1), 8 * MiB, T0)


async def test_claim_of_a_new_inode_at_a_busy_path_is_a_new_stream(
    store: CheckpointStore,
) -> None:
    first = make_stream("s1", path="/watch/cam.mp4")
    await store.claim_stream(first)
    await store.save_stream(first.evolve(size_bytes=5))  # the old stream goes on while it ends
    replacement = make_stream("s2", path="/watch/cam.mp4", identity=FileIdentity(2049, 99))
    assert await store.claim_stream(replacement) == (Claim.NEW, "s2")
    assert {s.stream_id for s in await store.unfinished_streams()} == {"s1", "s2"}
    await store.save_stream(first.evolve(size_bytes=6))
    again = make_stream("s3", path="/watch/cam.mp4", identity=FileIdentity(2049, 99))
    assert await store.claim_stream(again) == (Claim.EXISTING, "s2")


async def test_claim_of_an_unchanged_completed_file_is_completed(store: CheckpointStore) -> None:
    done = make_stream("s1", path="/watch/cam.mp4", size_bytes=20 * MiB, mtime_ns=2**62 + 1)
    await store.claim_stream(done)
    await store.finish_stream(done, completed_of(done))
    found_again = done.evolve(stream_id="s2", identity=FileIdentity(3, done.identity.inode))
    assert await store.claim_stream(found_again) == (Claim.COMPLETED, "s1")
    assert await store.load_stream("s2") is None
    assert await store.unfinished_streams() == []


@pytest.mark.parametrize(
    "change",
    [
        {"size_bytes": 20 * MiB + 1},
        {"mtime_ns": 2**62 + 2},  # beyond a double's precision: compared exactly
        {"identity": FileIdentity(2049, 5)},
    ],
)
async def test_claim_of_a_changed_completed_file_is_new(
    store: CheckpointStore, change: dict[str, object]
) -> None:
    done = make_stream("s1", path="/watch/cam.mp4", size_bytes=20 * MiB, mtime_ns=2**62 + 1)
    await store.claim_stream(done)
    await store.finish_stream(done, completed_of(done))
    changed = done.evolve(stream_id="s2", **change)
    assert await store.claim_stream(changed) == (Claim.NEW, "s2")
    assert await store.unfinished_streams() == [changed]


async def test_a_lone_agent_is_granted_its_leases(store: CheckpointStore) -> None:
    await store.save_stream(make_stream("s1"))
    first = await store.acquire_lease("s1", "agent-a", 5.0)
    second = await store.acquire_lease("s2", "agent-a", 5.0)
    assert first is not None and second is not None and first < second
    assert await store.lease_owner("s1") == "agent-a"
    assert await store.renew_lease("s1", 5.0)
    await store.record_part("s1", make_part(1), 8 * MiB, T0)
    await store.save_stream(make_stream("s1", size_bytes=9))
    await store.release_lease("s1")
    assert await store.lease_owner("s1") is None
    assert await store.lease_owner("never") is None


async def test_forgotten_completed_files_are_restored_without_replacing_a_newer_record(
    store: CheckpointStore,
) -> None:
    kept = await finish(store, "s1", path="/watch/kept.mp4")
    stale = completed_of(make_stream("s0", path="/watch/kept.mp4"))
    lost = dataclasses.replace(completed_of(make_stream("s2", path="/watch/lost.mp4")),
                               sha256_hex="ab" * 32, host="cam-1", extensions=2)  # fmt: skip
    assert await store.restore_completed_files([stale, lost]) == 1
    assert await store.completed_files() == {kept.path: kept, lost.path: lost}
    assert await store.restore_completed_files([lost]) == 0  # a second write-back: nothing
    assert await store.restore_completed_files([]) == 0
    assert await store.claim_stream(make_stream("s3", path="/watch/lost.mp4")) == (
        Claim.COMPLETED, "s2",
    )  # fmt: skip


async def test_a_lone_agent_renews_its_leases_in_one_call(store: CheckpointStore) -> None:
    for stream_id in ("s1", "s2"):
        await store.save_stream(make_stream(stream_id))
        assert await store.acquire_lease(stream_id, "agent-a", 5.0) is not None
    assert await store.renew_leases(["s1", "s2"], 5.0) == {"s1": True, "s2": True}
    assert await store.renew_leases([], 5.0) == {}


# -- Redis: the seed's key schema ---------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    opened = RedisStore(redis_url, history_limit=HISTORY_LIMIT)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def members(raw: aioredis.Redis, name: str) -> set[str]:
    return {str(member) for member in await raw.smembers(name)}


async def test_redis_writes_the_seed_key_schema(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream(upload_id="up-1", size_bytes=99, mtime_ns=7)
    await redis_store.save_stream(stream)
    part = make_part(1)
    await redis_store.record_part("s1", part, 8 * MiB, T0 + timedelta(seconds=5))
    assert await raw.hgetall("stream:s1:meta") == {
        "original_path": "/watch/cam/s1.mp4",
        "relative_path": "cam/s1.mp4",
        "s3_bucket": "videos",
        "s3_key_prefix": "recordings/cam/s1.mp4",
        "s3_upload_id": "up-1",
        "status": "active",
        "started_at_utc": "2024-05-01T12:00:00.123456+00:00",
        "last_activity_at_utc": "2024-05-01T12:00:05.123456+00:00",
        "device": "2049",
        "inode": "1234567",
        "size_bytes": "99",
        "mtime_ns": "7",
        "uploaded_bytes": str(8 * MiB),
        "part_size_bytes": str(8 * MiB),
        "part_size_fixed": "0",
        "reuploaded_parts": "0",
        "sha256": "",
        "completed_at_utc": "",
        "end_reason": "idle",
        "error": "",
        "host": "",
        "checksum_algorithm": "",
        "key_collision_of": "",
        "bytes_sent": "0",
        "rebuild": "",
        "extends": "",
    }
    assert await raw.hgetall("stream:s1:parts") == {
        "1": f'"{1:032x}":{8 * MiB}:2024-05-01T12:00:01.123457+00:00'
    }
    assert await raw.hgetall("stream:s1:checksums") == {"1": f"0:{1:032x}:{1:08x}::"}
    proven = dataclasses.replace(make_part(2), copied=True, proof=Proof.CHECKSUM_COMPARED)
    await redis_store.record_part("s1", proven, 16 * MiB, T0)
    checksums = await raw.hgetall("stream:s1:checksums")
    assert checksums["2"] == f"{8 * MiB}:{2:032x}:{2:08x}:copied:checksum_compared"
    assert await members(raw, "streams:active") == {"s1"}


async def test_redis_parts_checkpointed_before_crc32c_load_with_their_md5_only(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    # What an agent from before checksums wrote: no checksum_algorithm, "offset:md5" values.
    await redis_store.save_stream(make_stream(upload_id="up-1"))
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    await raw.hdel("stream:s1:meta", "checksum_algorithm")
    await raw.hset("stream:s1:checksums", "1", f"0:{1:032x}")
    stream = await redis_store.load_stream("s1")
    assert stream is not None and stream.checksum_algorithm == ""
    parts = await redis_store.load_parts("s1")
    assert parts == {1: dataclasses.replace(make_part(1), crc32c_hex="")}


@pytest.mark.parametrize(
    ("value", "copied"),
    [(f"0:{1:032x}:{1:08x}", False), (f"0:{1:032x}:{1:08x}:copied", True)],
)
async def test_redis_parts_checkpointed_before_proofs_load_with_none_recorded(
    redis_store: RedisStore, raw: aioredis.Redis, value: str, copied: bool
) -> None:
    # What an agent from before proofs were kept wrote: the value ends at the flag.
    await redis_store.save_stream(make_stream(upload_id="up-1"))
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    await raw.hset("stream:s1:checksums", "1", value)
    parts = await redis_store.load_parts("s1")
    assert parts == {1: dataclasses.replace(make_part(1), copied=copied, proof=None)}


@pytest.mark.parametrize(
    ("status", "set_name"),
    [
        (Status.ACTIVE, "streams:active"),
        (Status.PENDING_COMPLETION, "streams:pending_completion"),
        (Status.S3_COMPLETED, "streams:pending_completion"),
        *[(status, "streams:failed") for status in Status if status.is_failed],
        (Status.COMPLETED, "streams:completed"),
        (Status.ABORTED_NO_PARTS, None),
    ],
)
async def test_redis_stream_sits_in_the_one_set_of_its_status(
    redis_store: RedisStore, raw: aioredis.Redis, status: Status, set_name: str | None
) -> None:
    await redis_store.save_stream(make_stream(status=Status.ACTIVE))
    await redis_store.save_stream(make_stream(status=Status.FAILED_S3_COMPLETE))
    await redis_store.save_stream(make_stream(status=status))
    for name in ("active", "pending_completion", "failed", "completed"):
        expected = {"s1"} if f"streams:{name}" == set_name else set()
        assert await members(raw, f"streams:{name}") == expected, name


async def test_redis_finish_deletes_working_keys(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream(status=Status.PENDING_COMPLETION)
    await redis_store.save_stream(stream)
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    record = completed_of(stream)
    await redis_store.finish_stream(stream.evolve(status=Status.COMPLETED), record)
    assert await raw.exists("stream:s1:meta", "stream:s1:parts", "stream:s1:checksums") == 0
    assert await members(raw, "streams:completed") == {"s1"}
    assert await members(raw, "streams:active") == set()
    assert await members(raw, "streams:pending_completion") == set()
    assert await raw.hkeys("streams:completed_files") == [stream.path]
    assert await raw.llen("streams:completed_log") == 1
    with pytest.raises(CheckpointError, match="no checkpoint record"):
        await redis_store.record_part("s1", make_part(2), 16 * MiB, T0)  # a late checkpoint
    assert await raw.exists("stream:s1:meta", "stream:s1:parts", "stream:s1:checksums") == 0


async def test_redis_scripts_survive_a_flushed_script_cache(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    await raw.script_flush()  # what a restarted redis-server looks like to a connected agent
    await redis_store.record_part("s1", make_part(2), 16 * MiB, T0)
    await redis_store.remove_parts("s1", [2], 8 * MiB)
    assert await redis_store.load_parts("s1") == {1: make_part(1)}


async def test_redis_ids_trimmed_off_the_log_leave_the_completed_set(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    for index in range(5):
        await finish(redis_store, f"s{index}")
    aborted = make_stream("gone", status=Status.ABORTED_NO_PARTS)
    await redis_store.finish_stream(aborted, completed_of(aborted, status=aborted.status))
    assert await raw.llen("streams:completed_log") == HISTORY_LIMIT
    assert await members(raw, "streams:completed") == {"s3", "s4"}  # "gone" never entered


async def test_redis_aborted_stream_never_enters_the_completed_set(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream(status=Status.ABORTED_NO_PARTS)
    await redis_store.save_stream(stream)
    await redis_store.finish_stream(stream, completed_of(stream, status=Status.ABORTED_NO_PARTS))
    assert await members(raw, "streams:completed") == set()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '"abc":5242880:2024-05-01T12:00:00.123456+00:00',
            ('"abc"', 5242880, datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ),
        (
            '"d41d8cd98f00b204e9800998ecf8427e-3":0:2024-05-01T14:30:00+02:00',
            ('"d41d8cd98f00b204e9800998ecf8427e-3"', 0, datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ),
        ("etag:1:2024-05-01T12:00:00Z", ("etag", 1, datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ],
)
def test_parse_part_value_splits_around_the_colons_of_the_timestamp(
    value: str, expected: tuple[str, int, datetime]
) -> None:
    assert parse_part_value("s1", "1", value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"abc"',
        '"abc":5',
        ":5:2024-05-01T12:00:00+00:00",  # empty ETag
        '"abc":x:2024-05-01T12:00:00+00:00',
        '"abc":-1:2024-05-01T12:00:00+00:00',
        '"abc": 5:2024-05-01T12:00:00+00:00',
        '"abc":5.0:2024-05-01T12:00:00+00:00',
        '"abc"::2024-05-01T12:00:00+00:00',
        '"abc":5:',
        '"abc":5:yesterday',
        '"abc":5:2024-05-01T12:00:00',  # no time zone
    ],
)
def test_parse_part_value_reports_malformed_values(value: str) -> None:
    with pytest.raises(CheckpointCorrupt) as caught:
        parse_part_value("s1", "7", value)
    assert repr(value) in str(caught.value)
    assert "stream:s1:parts field 7" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("stream:s1:parts", "1", "garbage"),
        ("stream:s1:parts", "one", f'"e":1:{iso(T0)}'),
        ("stream:s1:checksums", "1", "nonsense"),
        ("stream:s1:checksums", "2", "0:abc"),  # a checksum of no part
        ("stream:s1:checksums", "1", "0:abc:def::proven-by-hope"),
        ("stream:s1:checksums", "1", "0:abc:def:moved:"),
        ("stream:s1:checksums", "1", "0:abc:def::unverified:more"),
        ("stream:s1:checksums", "1", "x:abc:def::"),
    ],
)
async def test_redis_corrupt_part_state_makes_load_parts_raise(
    redis_store: RedisStore, raw: aioredis.Redis, key: str, field: str, value: str
) -> None:
    await redis_store.save_stream(make_stream())
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    await raw.hset(key, field, value)
    with pytest.raises(CheckpointCorrupt, match=key):
        await redis_store.load_parts("s1")


async def test_redis_part_without_its_checksum_is_corrupt(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    await raw.hdel("stream:s1:checksums", "1")
    with pytest.raises(CheckpointCorrupt, match="no checksum of part 1"):
        await redis_store.load_parts("s1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "bogus"),
        ("inode", "-3"),
        ("started_at_utc", "2024-05-01"),
        ("part_size_fixed", "yes"),
    ],
)
async def test_redis_corrupt_meta_makes_load_stream_raise(
    redis_store: RedisStore, raw: aioredis.Redis, field: str, value: str
) -> None:
    await redis_store.save_stream(make_stream())
    await raw.hset("stream:s1:meta", field, value)
    with pytest.raises(CheckpointCorrupt, match=f"stream:s1:meta: field {field}.*{value}"):
        await redis_store.load_stream("s1")


async def test_redis_meta_missing_a_required_field_is_corrupt(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    await raw.hdel("stream:s1:meta", "inode")
    with pytest.raises(CheckpointCorrupt, match="field inode is missing"):
        await redis_store.load_stream("s1")


@pytest.mark.parametrize(
    "template",
    ["redis://streamup:{pw}@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password={pw}"],
)
async def test_redis_unreachable_is_retryable_and_hides_the_password(template: str) -> None:
    port = servers.free_port()  # nothing listens there
    store = RedisStore(template.format(pw="s3cr%40t-pw", port=port))
    with pytest.raises(CheckpointError) as caught:
        await store.open()
    message = str(caught.value)
    assert caught.value.retryable
    assert f"redis://127.0.0.1:{port}/0" in message
    assert "s3cr" not in message and "s3cr@t" not in message
    with pytest.raises(CheckpointError, match="not open"):
        await store.ping()
    await store.close()


async def test_redis_bad_url_names_the_setting() -> None:
    store = RedisStore("http://user:hunter2@localhost:1/0")
    with pytest.raises(CheckpointError, match="REDIS_URL=") as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)
    assert not caught.value.retryable


# -- Redis: many agents, one server (two RedisStore instances are two agents) -------------------


@pytest.fixture
async def agent_b(redis_url: str) -> AsyncIterator[RedisStore]:
    """A second agent on the same Redis as `redis_store` (agent A)."""
    opened = RedisStore(redis_url, history_limit=HISTORY_LIMIT)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def eventually(check: Callable[[], Awaitable[T]], deadline_s: float = 5.0) -> T:
    """The first truthy result of `check`, polled until the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not (result := await check()):
        assert loop.time() < end, f"still {result!r} after {deadline_s} s"
        await asyncio.sleep(0.01)
    return result


async def take_over(old: RedisStore, new: RedisStore, stream: StreamRecord) -> tuple[int, int]:
    """`old` leases the stream briefly and lets it lapse; `new` takes it: the two tokens."""
    old_token = await old.acquire_lease(stream.stream_id, "agent-a", 0.2)
    assert old_token is not None
    new_token = await eventually(lambda: new.acquire_lease(stream.stream_id, "agent-b", 30.0))
    return old_token, new_token


async def test_redis_a_held_lease_is_refused_to_another_agent(
    redis_store: RedisStore, agent_b: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    token = await redis_store.acquire_lease("s1", "agent-a", 30.0)
    assert token is not None
    assert await agent_b.acquire_lease("s1", "agent-b", 30.0) is None
    assert await agent_b.lease_owner("s1") == "agent-a"
    assert await redis_store.lease_owner("s1") == "agent-a"
    assert await raw.get("stream:s1:lease") == f"agent-a|{token}"
    assert await redis_store.acquire_lease("s1", "agent-a", 30.0) == token  # same owner: kept
    assert not await agent_b.renew_lease("s1", 30.0)  # B never held it
    assert await agent_b.lease_owner("s2") is None


async def test_redis_a_claimed_stream_cannot_be_taken_before_its_finder_holds_it(
    redis_store: RedisStore, agent_b: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream("s1", path="/watch/cam.mp4")
    claimed = await redis_store.claim_stream(stream, owner="agent-a", ttl_s=30.0)
    assert claimed == (Claim.NEW, "s1")
    # Agent B finds the same file at once: the stream exists, and its lease is A's already.
    again = make_stream("s2", path="/watch/cam.mp4")
    assert await agent_b.claim_stream(again, owner="agent-b", ttl_s=30.0) == (Claim.EXISTING, "s1")
    assert await agent_b.acquire_lease("s1", "agent-b", 30.0) is None
    assert (await raw.get("stream:s1:lease")).startswith("agent-a|")
    assert await agent_b.take_lease("s1", "agent-b", 30.0, from_owner="agent-c") is None
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)  # fenced with A's lease
    assert await redis_store.renew_lease("s1", 30.0)


async def test_redis_a_dead_agents_lease_is_taken_at_once_and_only_from_it(
    redis_store: RedisStore, agent_b: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    dead = await redis_store.acquire_lease("s1", "agent-a", 30.0)
    assert dead is not None
    # Only from the agent named dead: a live holder keeps its lease.
    assert await agent_b.take_lease("s1", "agent-b", 30.0, from_owner="agent-c") is None
    token = await agent_b.take_lease("s1", "agent-b", 30.0, from_owner="agent-a")
    assert token is not None and token > dead
    assert await raw.get("stream:s1:lease") == f"agent-b|{token}"
    await agent_b.record_part("s1", make_part(1), 8 * MiB, T0)  # fenced with the new lease
    with pytest.raises(LeaseLost):
        await redis_store.record_part("s1", make_part(2), 16 * MiB, T0)
    # A second taker racing for the same dead agent's lease loses: the holder is agent-b now.
    assert await redis_store.take_lease("s1", "agent-c", 30.0, from_owner="agent-a") is None


async def test_redis_an_agent_whose_lease_lapsed_is_fenced_out(
    redis_store: RedisStore, agent_b: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream()
    await redis_store.save_stream(stream)
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    old_token, new_token = await take_over(redis_store, agent_b, stream)
    assert old_token < new_token
    assert await redis_store.lease_owner("s1") == "agent-b"
    b_stream = stream.evolve(size_bytes=99, uploaded_bytes=16 * MiB)
    await agent_b.save_stream(b_stream)
    await agent_b.record_part("s1", make_part(2), 16 * MiB, T0)
    stale: list[Callable[[], Awaitable[None]]] = [
        lambda: redis_store.record_part("s1", make_part(3), 24 * MiB, T0),
        lambda: redis_store.remove_parts("s1", [1, 2], 0),
        lambda: redis_store.save_stream(stream.evolve(status=Status.FAILED_S3_COMPLETE)),
        lambda: redis_store.finish_stream(stream, completed_of(stream)),
    ]
    for write in stale:
        with pytest.raises(LeaseLost, match="stream s1 is leased to agent-b") as caught:
            await write()
        assert not caught.value.retryable
    assert await agent_b.load_parts("s1") == {1: make_part(1), 2: make_part(2)}
    assert await agent_b.load_stream("s1") == b_stream
    assert await agent_b.completed_files() == {}
    assert not await redis_store.renew_lease("s1", 30.0)
    await redis_store.release_lease("s1")
    assert await raw.get("stream:s1:lease") == f"agent-b|{new_token}"
    assert await agent_b.renew_lease("s1", 30.0)
    await agent_b.record_part("s1", make_part(3), 24 * MiB, T0)
    await agent_b.finish_stream(b_stream, completed_of(b_stream))
    assert await raw.exists("stream:s1:lease", "stream:s1:meta") == 0


async def test_redis_a_lapsed_lease_nobody_took_is_renewed(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    await redis_store.save_stream(make_stream())
    token = await redis_store.acquire_lease("s1", "agent-a", 0.1)

    async def lapsed() -> bool:
        return await raw.exists("stream:s1:lease") == 0

    await eventually(lapsed)
    assert await redis_store.renew_lease("s1", 30.0)
    assert await raw.get("stream:s1:lease") == f"agent-a|{token}"
    assert await raw.pttl("stream:s1:lease") > 10_000
    await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)


async def test_redis_a_stream_finished_by_its_new_owner_stays_finished(
    redis_store: RedisStore, agent_b: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream()
    await redis_store.save_stream(stream)
    await take_over(redis_store, agent_b, stream)
    await agent_b.finish_stream(stream, completed_of(stream))
    # The lease key is gone with the stream: "missing" must not read as "still ours" now.
    assert not await redis_store.renew_lease("s1", 30.0)
    with pytest.raises(LeaseLost, match="stream s1 was finished by another agent"):
        await redis_store.save_stream(stream.evolve(status=Status.PENDING_COMPLETION))
    with pytest.raises(LeaseLost, match="stream s1 was finished by another agent"):
        await redis_store.record_part("s1", make_part(1), 8 * MiB, T0)
    assert await raw.exists("stream:s1:meta", "stream:s1:lease") == 0
    assert await agent_b.unfinished_streams() == []


async def test_redis_finish_drops_the_lease_and_the_path_entry(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    stream = make_stream(path="/watch/cam.mp4")
    await redis_store.claim_stream(stream)
    assert await raw.hgetall("streams:paths") == {"/watch/cam.mp4": "s1"}
    assert await redis_store.acquire_lease("s1", "agent-a", 30.0) is not None
    await redis_store.finish_stream(stream, completed_of(stream))
    assert await raw.exists("stream:s1:lease") == 0
    assert await raw.hgetall("streams:paths") == {}
    assert not await redis_store.renew_lease("s1", 30.0)  # the store forgot the lease


async def test_redis_path_entry_follows_the_newest_stream_of_a_path(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    old = make_stream("old", path="/watch/cam.mp4")
    await redis_store.save_stream(old)  # a plain save indexes the path too
    assert await raw.hgetall("streams:paths") == {"/watch/cam.mp4": "old"}
    new = make_stream("new", path="/watch/cam.mp4", identity=FileIdentity(2049, 99))
    assert await redis_store.claim_stream(new) == (Claim.NEW, "new")
    await redis_store.save_stream(old.evolve(end_reason=EndReason.FILE_REPLACED))
    await redis_store.finish_stream(old, completed_of(old))
    assert await raw.hgetall("streams:paths") == {"/watch/cam.mp4": "new"}


# -- SQLite: one file in STATE_DIR, one agent at a time -----------------------------------------


async def test_sqlite_creates_state_dir_with_a_wal_database(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    store = SqliteStore(state_dir)
    await store.open()
    try:
        await store.save_stream(make_stream())
    finally:
        await store.close()
    with sqlite3.connect(state_dir / "streamup.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT stream_id FROM streams").fetchall() == [("s1",)]
    conn.close()


async def test_sqlite_unusable_state_dir_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SqliteStore(blocker / "state")
    with pytest.raises(CheckpointError, match=f"STATE_DIR={blocker / 'state'}") as caught:
        await store.open()
    assert "\n" not in str(caught.value)
    await store.close()


async def test_sqlite_second_exclusive_store_is_refused_in_process(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    await first.open()
    try:
        second = SqliteStore(tmp_path)
        with pytest.raises(CheckpointError) as caught:
            await second.open()
        assert f"another streamup agent is already using STATE_DIR={tmp_path}" in str(caught.value)
        assert not caught.value.retryable
    finally:
        await first.close()
    await second.open()  # the lock goes with the store that held it
    await second.close()


async def test_sqlite_second_exclusive_store_is_refused_in_another_process(
    tmp_path: Path,
) -> None:
    script = (
        "import asyncio, sys\n"
        "from streamup.checkpoint.sqlite import SqliteStore\n"
        "from streamup.errors import CheckpointError\n"
        "async def main():\n"
        "    store = SqliteStore(sys.argv[1])\n"
        "    try:\n"
        "        await store.open()\n"
        "    except CheckpointError as exc:\n"
        "        print(exc)\n"
        "        return 3\n"
        "    await store.close()\n"
        "    return 0\n"
        "sys.exit(asyncio.run(main()))\n"
    )
    first = SqliteStore(tmp_path)
    await first.open()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(tmp_path), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        await first.close()
    assert proc.returncode == 3
    assert f"STATE_DIR={tmp_path}" in stdout.decode()


async def test_sqlite_non_exclusive_store_reads_while_the_agent_runs(tmp_path: Path) -> None:
    agent = SqliteStore(tmp_path)
    await agent.open()
    try:
        stream = make_stream()
        await agent.save_stream(stream)
        await agent.record_part("s1", make_part(1), 8 * MiB, T0)
        reader = SqliteStore(tmp_path, exclusive=False)
        await reader.open()
        try:
            assert await reader.unfinished_streams() == [stream.evolve(uploaded_bytes=8 * MiB)]
            assert await reader.load_parts("s1") == {1: make_part(1)}
        finally:
            await reader.close()
        await agent.record_part("s1", make_part(2), 16 * MiB, T0)  # the agent's lock is intact
    finally:
        await agent.close()


async def test_a_lost_sqlite_file_is_rebuilt_with_what_it_still_held(tmp_path: Path) -> None:
    # The file is deleted and a stream finishes into it before the loss is noticed (the open
    # connection writes on). The rebuild from memory, which still saw that stream active, must
    # neither lose its completion nor bring the stream back, and keeps what memory never held:
    # the history, a stream no worker drives. A record of a file deleted since is not kept.
    files = tmp_path / "watch"
    files.mkdir()
    live, idle, gone = (make_stream(n, path=str(files / f"{n}.mp4")) for n in ("s1", "s2", "s3"))
    for stream in (live, idle):
        Path(stream.path).touch()
    store = SqliteStore(tmp_path / "state")
    await store.open()
    try:
        for stream in (live, idle, gone):
            await store.save_stream(stream)
        await store.record_part("s1", make_part(1), 8 * MiB, T0)
        await store.record_part("s2", make_part(1), 8 * MiB, T0)
        await store.finish_stream(gone, completed_of(gone))
        for name in ("streamup.db", "streamup.db-wal", "streamup.db-shm"):
            (tmp_path / "state" / name).unlink(missing_ok=True)
        assert store.file_lost()
        await store.finish_stream(live, completed_of(live))  # into the deleted file
        # A write queued behind the swap goes to the new file, not the closed old one.
        later = make_stream("s4", path=str(files / "s4.mp4"))
        held, _ = await asyncio.gather(
            store.replace_lost([(live, [make_part(1)])], keep_completed=os.path.lexists),
            store.save_stream(later),
        )
        assert not store.file_lost()
        assert held == 1
        assert await store.load_stream("s4") == later
        assert await store.load_stream("s1") is None  # finished, and stays so
        assert await store.completed_file(live.path) == completed_of(live)
        assert await store.completed_file(gone.path) is None
        assert await store.load_stream("s2") == dataclasses.replace(idle, uploaded_bytes=8 * MiB)
        assert await store.load_parts("s2") == {1: make_part(1)}
        history = await store.recent_completions(5)
        assert [r.stream_id for r in history] == ["s1", "s3"]
    finally:
        await store.close()


async def test_sqlite_writes_taken_before_close_are_committed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    await asyncio.gather(store.save_stream(make_stream()), store.close())
    with pytest.raises(CheckpointError, match="not open"):
        await store.save_stream(make_stream("s2"))
    await store.open()
    try:
        assert await store.load_stream("s1") == make_stream()
    finally:
        await store.close()


async def test_sqlite_part_with_an_unknown_proof_is_corrupt(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        await store.save_stream(make_stream())
        await store.record_part("s1", make_part(1), 8 * MiB, T0)
        with sqlite3.connect(tmp_path / "streamup.db") as conn:
            conn.execute("UPDATE parts SET proof = 'proven-by-hope'")
        conn.close()
        with pytest.raises(CheckpointCorrupt, match=r"unknown proof 'proven-by-hope'.*part 1"):
            await store.load_parts("s1")
    finally:
        await store.close()


async def test_sqlite_database_without_later_columns_is_migrated(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    await store.save_stream(make_stream(host="edge-a", checksum_algorithm="CRC32C"))
    await store.record_part("s1", make_part(1), 8 * MiB, T0)
    await store.close()
    with sqlite3.connect(tmp_path / "streamup.db") as conn:  # as an older streamup left it
        conn.execute("DROP INDEX streams_by_path")
        conn.execute("ALTER TABLE streams DROP COLUMN host")
        conn.execute("ALTER TABLE streams DROP COLUMN checksum_algorithm")
        conn.execute("ALTER TABLE streams DROP COLUMN key_collision_of")
        for column in ("bytes_sent", "rebuild"):
            conn.execute(f"ALTER TABLE streams DROP COLUMN {column}")
        conn.execute("ALTER TABLE parts DROP COLUMN crc32c_hex")
        conn.execute("ALTER TABLE parts DROP COLUMN proof")
    conn.close()
    await store.open()
    try:
        assert await store.load_stream("s1") == make_stream(uploaded_bytes=8 * MiB)
        assert await store.load_parts("s1") == {1: dataclasses.replace(make_part(1), crc32c_hex="")}
        await store.save_stream(make_stream(host="edge-b", checksum_algorithm="CRC32C"))
        stream = make_stream(host="edge-b", checksum_algorithm="CRC32C")
        assert await store.load_stream("s1") == stream
        claim = await store.claim_stream(make_stream("s2", path=make_stream().path))
        assert claim == (Claim.EXISTING, "s1")
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "streamup.db") as conn:
        assert conn.execute("PRAGMA index_list(streams)").fetchall()[0][1] == "streams_by_path"
    conn.close()


async def test_sqlite_completed_files_without_the_local_action_columns_are_migrated(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    record = await finish(store, "m1")
    await store.close()
    added = ("ctime_ns", "sha256", "object_etag", "object_crc32c", "integrity_proof", "host",
             "local_action", "local_target")  # fmt: skip
    with sqlite3.connect(tmp_path / "streamup.db") as conn:  # as an older streamup left it
        for column in added:
            conn.execute(f"ALTER TABLE completed_files DROP COLUMN {column}")
    conn.close()
    await store.open()
    try:
        assert await store.completed_file(record.path) == record  # defaults: proves nothing
        proven = dataclasses.replace(record, **PROVEN)  # type: ignore[arg-type]
        assert await store.update_completed_file(proven)
        assert (await store.completed_files())[record.path] == proven
    finally:
        await store.close()


async def test_redis_completed_record_from_before_the_local_action_loads_with_defaults(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    record = completed_of(make_stream("old"))
    old = {k: v for k, v in json.loads(completed_to_json(record)).items() if k in SEED_FIELDS}
    await raw.hset("streams:completed_files", record.path, json.dumps(old))
    assert await redis_store.completed_file(record.path) == record


SEED_FIELDS = {"stream_id", "path", "bucket", "key", "status", "device", "inode", "size_bytes",
               "mtime_ns", "completed_at_utc", "end_reason"}  # fmt: skip


async def test_sqlite_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with pytest.raises(CheckpointError, match="not open"):
        await store.load_stream("s1")
    await store.close()


# -- the in-memory fake -------------------------------------------------------------------------


async def test_memory_store_raises_injected_errors_then_recovers() -> None:
    store = MemoryStore()
    store.inject_error(CheckpointError("blip", retryable=True), count=2)
    for _ in range(2):
        with pytest.raises(CheckpointError, match="blip"):
            await store.save_stream(make_stream())
    await store.save_stream(make_stream())
    assert await store.load_stream("s1") == make_stream()


# -- the event outbox: the contract on every backend, then Redis' keys and SQLite's migration ---


def make_event(
    stream_id: str = "s1", *, body: str = "", event_type: str = "stream.completed"
) -> OutboxEvent:
    return OutboxEvent(
        event_id=f"ev-{stream_id}-{event_type}",
        event_type=event_type,
        stream_id=stream_id,
        host="edge-a",
        created_at=T0 + timedelta(minutes=5, microseconds=7),
        body=body or f'{{"id":"ev-{stream_id}","stream_id":"{stream_id}","name":"caf\\u00e9"}}',
    )


async def finish_with(store: CheckpointStore, stream_id: str, event: OutboxEvent | None) -> None:
    stream = make_stream(stream_id, status=Status.COMPLETED)
    await store.save_stream(stream)
    await store.finish_stream(stream, completed_of(stream), event)


async def test_a_finish_with_an_event_puts_it_in_the_outbox(store: CheckpointStore) -> None:
    event = make_event()
    await finish_with(store, "s1", event)
    [entry] = await store.outbox()
    assert entry.event == event
    assert entry.event.created_at.tzinfo == UTC
    assert entry.deliveries == {}
    assert await store.load_stream("s1") is None  # in the same step that finished the stream


async def test_a_finish_without_an_event_leaves_the_outbox_empty(store: CheckpointStore) -> None:
    await finish_with(store, "s1", None)
    assert await store.outbox() == []


async def test_the_outbox_keeps_the_order_events_were_written(store: CheckpointStore) -> None:
    for stream_id in ("s3", "s1", "s2"):
        await finish_with(store, stream_id, make_event(stream_id))
    entries = await store.outbox()
    assert [e.event.stream_id for e in entries] == ["s3", "s1", "s2"]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert len({e.seq for e in entries}) == 3


async def test_a_retried_finish_keeps_the_first_event_and_its_place(
    store: CheckpointStore,
) -> None:
    first = make_event("s1", body='{"try":1}')
    await finish_with(store, "s1", first)
    await finish_with(store, "s2", make_event("s2"))
    await finish_with(store, "s1", make_event("s1", body='{"try":2}'))  # same id, rebuilt body
    entries = await store.outbox()
    assert [e.event for e in entries] == [first, make_event("s2")]


async def test_delivery_states_are_kept_per_sink_and_replaced(store: CheckpointStore) -> None:
    await finish_with(store, "s1", make_event())
    event_id = make_event().event_id
    await store.set_delivery(event_id, "webhook", DeliveryState(DeliveryStatus.RETRYING, 1, "500"))
    await store.set_delivery(event_id, "command", DeliveryState(DeliveryStatus.DELIVERED, 1))
    await store.set_delivery(
        event_id, "webhook", DeliveryState(DeliveryStatus.UNDELIVERABLE, 6, "HTTP 404: nope")
    )
    [entry] = await store.outbox()
    assert entry.deliveries == {
        "webhook": DeliveryState(DeliveryStatus.UNDELIVERABLE, 6, "HTTP 404: nope"),
        "command": DeliveryState(DeliveryStatus.DELIVERED, 1, None),
    }


async def test_a_long_last_error_is_clipped(store: CheckpointStore) -> None:
    await finish_with(store, "s1", make_event())
    page = "<html>" + "x" * 5000
    await store.set_delivery(
        make_event().event_id, "webhook", DeliveryState(DeliveryStatus.RETRYING, 1, page)
    )
    [entry] = await store.outbox()
    error = entry.deliveries["webhook"].last_error
    assert error is not None and error.startswith("<html>xxx") and len(error) < 600


async def test_remove_event_drops_it_and_a_late_state_does_not_bring_it_back(
    store: CheckpointStore,
) -> None:
    await finish_with(store, "s1", make_event("s1"))
    await finish_with(store, "s2", make_event("s2"))
    gone = make_event("s1").event_id
    await store.set_delivery(gone, "webhook", DeliveryState(DeliveryStatus.RETRYING, 1, "x"))
    await store.remove_event(gone)
    await store.set_delivery(gone, "command", DeliveryState(DeliveryStatus.DELIVERED, 1))
    await store.remove_event("never-written")
    assert [e.event.event_id for e in await store.outbox()] == [make_event("s2").event_id]
    # Written again later (a new finish of the same id) it starts with no stale state.
    await finish_with(store, "s1", make_event("s1"))
    entries = await store.outbox()
    assert [(e.event.stream_id, e.deliveries) for e in entries] == [("s2", {}), ("s1", {})]


async def test_finish_refuses_an_event_of_another_stream(store: CheckpointStore) -> None:
    stream = make_stream("s1", status=Status.COMPLETED)
    await store.save_stream(stream)
    with pytest.raises(CheckpointError, match="event of stream s2"):
        await store.finish_stream(stream, completed_of(stream), make_event("s2"))
    assert await store.load_stream("s1") == stream
    assert await store.outbox() == []


async def test_the_outbox_survives_closing_and_reopening(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    try:
        await finish_with(first, "s1", make_event())
        await first.set_delivery(
            make_event().event_id, "webhook", DeliveryState(DeliveryStatus.RETRYING, 2, "down")
        )
    finally:
        await first.close()
    second = backend.make()
    await second.open()
    try:
        [entry] = await second.outbox()
        assert entry.event == make_event()
        assert entry.deliveries == {"webhook": DeliveryState(DeliveryStatus.RETRYING, 2, "down")}
    finally:
        await second.close()


async def test_redis_outbox_keys_and_one_events_stream_entry_per_event(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    event = make_event()
    await finish_with(redis_store, "s1", event)
    await finish_with(redis_store, "s1", event)  # a retried finish (its reply was lost)
    assert await raw.hkeys("streams:outbox") == [event.event_id]
    assert await raw.zrange("streams:outbox_queue", 0, -1) == [event.event_id]
    entries = await raw.xrange("streams:events")
    assert [fields for _, fields in entries] == [
        {"id": event.event_id, "type": "stream.completed", "stream_id": "s1", "event": event.body}
    ]
    await redis_store.set_delivery(
        event.event_id, "webhook", DeliveryState(DeliveryStatus.DELIVERED, 1)
    )
    assert await raw.exists(f"event:{event.event_id}:deliveries") == 1
    await redis_store.remove_event(event.event_id)
    assert (
        await raw.exists(
            "streams:outbox", "streams:outbox_queue", f"event:{event.event_id}:deliveries"
        )
        == 0
    )
    assert await raw.xlen("streams:events") == 1  # the stream is a log, not a queue


async def test_redis_events_stream_is_capped_near_the_history_limit(
    redis_url: str, raw: aioredis.Redis
) -> None:
    store = RedisStore(redis_url, history_limit=100)
    await store.open()
    try:
        for index in range(400):
            await finish_with(store, f"s{index}", make_event(f"s{index}"))
    finally:
        await store.close()
    assert 100 <= await raw.xlen("streams:events") < 400  # MAXLEN ~: trimmed in whole nodes


async def test_redis_a_fenced_out_finish_writes_no_event(
    redis_store: RedisStore, agent_b: RedisStore
) -> None:
    stream = make_stream(status=Status.S3_COMPLETED)
    await redis_store.save_stream(stream)
    await take_over(redis_store, agent_b, stream)
    with pytest.raises(LeaseLost):
        await redis_store.finish_stream(stream, completed_of(stream), make_event())
    assert await agent_b.outbox() == []


async def test_redis_corrupt_outbox_event_is_reported(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    await finish_with(redis_store, "s1", make_event())
    await raw.hset("streams:outbox", make_event().event_id, '{"event_id": 5}')
    with pytest.raises(CheckpointCorrupt, match="streams:outbox field"):
        await redis_store.outbox()


# The local-file action's events: written with the compare-and-set forget of the file's record.


async def finish_then_intend(store: CheckpointStore, stream_id: str) -> CompletedRecord:
    """A completed stream (its event in the outbox) whose record holds a delete intent."""
    await finish_with(store, stream_id, make_event(stream_id))
    record = await store.completed_file(make_stream(stream_id).path)
    assert record is not None
    intent = dataclasses.replace(record, local_action="delete")
    assert await store.update_completed_file(intent)
    return intent


def file_event(stream_id: str) -> OutboxEvent:
    return make_event(stream_id, event_type="file.deleted", body=f'{{"deleted":"{stream_id}"}}')


async def test_forgetting_a_file_with_its_event_writes_both_in_one_step(
    store: CheckpointStore,
) -> None:
    intent = await finish_then_intend(store, "d1")
    await store.forget_completed_file(intent.path, "d1", file_event("d1"))
    assert await store.completed_file(intent.path) is None
    entries = await store.outbox()
    assert [e.event for e in entries] == [make_event("d1"), file_event("d1")]  # written order
    assert entries[1].deliveries == {}
    assert await store.recent_completions(1) == [completed_of(make_stream("d1"))]  # history kept


async def test_a_forget_that_finds_another_streams_record_writes_no_event(
    store: CheckpointStore,
) -> None:
    intent = await finish_then_intend(store, "d1")
    await store.forget_completed_file(intent.path, "someone-else", make_event("someone-else"))
    await store.forget_completed_file("/watch/cam/none.mp4", "d1", file_event("d1"))
    assert await store.completed_file(intent.path) == intent
    assert [e.event for e in await store.outbox()] == [make_event("d1")]


async def test_a_retried_forget_never_writes_the_event_again_even_once_delivered(
    store: CheckpointStore,
) -> None:
    intent = await finish_then_intend(store, "d1")
    await store.forget_completed_file(intent.path, "d1", file_event("d1"))
    await store.forget_completed_file(intent.path, "d1", file_event("d1"))  # reply was lost
    assert [e.event for e in await store.outbox()] == [make_event("d1"), file_event("d1")]
    for entry in await store.outbox():
        await store.remove_event(entry.event.event_id)  # delivered
    await store.forget_completed_file(intent.path, "d1", file_event("d1"))
    assert await store.outbox() == []  # the record went with the event: nothing brings it back


async def test_a_forget_refuses_an_event_of_another_stream_or_without_its_stream(
    store: CheckpointStore,
) -> None:
    intent = await finish_then_intend(store, "d1")
    with pytest.raises(CheckpointError, match="event of stream d2 given for d1"):
        await store.forget_completed_file(intent.path, "d1", file_event("d2"))
    with pytest.raises(CheckpointError, match="event of stream d1 given for None"):
        await store.forget_completed_file(intent.path, None, file_event("d1"))
    assert await store.completed_file(intent.path) == intent
    assert [e.event for e in await store.outbox()] == [make_event("d1")]


async def test_redis_forget_with_an_event_writes_the_outbox_keys_and_one_stream_entry(
    redis_store: RedisStore, raw: aioredis.Redis
) -> None:
    intent = await finish_then_intend(redis_store, "d1")
    await redis_store.forget_completed_file(intent.path, "d1", file_event("d1"))
    await redis_store.forget_completed_file(intent.path, "d1", file_event("d1"))
    assert await raw.hexists("streams:completed_files", intent.path) == 0
    ids = [make_event("d1").event_id, file_event("d1").event_id]
    assert await raw.zrange("streams:outbox_queue", 0, -1) == ids
    entries = [fields for _, fields in await raw.xrange("streams:events")]
    assert [(f["id"], f["type"], f["stream_id"]) for f in entries] == [
        (ids[0], "stream.completed", "d1"),
        (ids[1], "file.deleted", "d1"),
    ]
    assert entries[1]["event"] == file_event("d1").body


async def test_sqlite_database_without_the_outbox_tables_gets_them(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "streamup.db") as conn:  # as an older streamup left it
        conn.execute("DROP TABLE outbox")
        conn.execute("DROP TABLE deliveries")
    conn.close()
    await store.open()
    try:
        await finish_with(store, "s1", make_event())
        assert [e.event for e in await store.outbox()] == [make_event()]
    finally:
        await store.close()
