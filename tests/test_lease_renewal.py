"""Lease renewals batched: every lease an agent holds renewed in one round trip per TTL/3, a lost
one reported for its own stream only (stream.renewal, stream.ownership, a real redis-server).
And the other half of a store that forgot: completed-file records written back from memory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from streamup.checkpoint.memory import MemoryStore
from streamup.checkpoint.redis import RedisStore
from streamup.checkpoint.redis_leases import RENEW_BATCH
from streamup.errors import CheckpointError
from streamup.models import Claim, CompletedRecord
from streamup.stream.forgotten import CompletedWriteBack
from streamup.stream.ownership import Ownership
from streamup.stream.renewal import lost_leases
from tests.test_checkpoint_contract import completed_of, make_stream


@pytest.mark.parametrize(
    ("sent", "reply", "kept", "lost"),
    [
        ({"a": 1, "b": 2}, {"a": True, "b": True}, {"a": 1, "b": 2}, []),
        ({"a": 1, "b": 2}, {"a": True, "b": False}, {"a": 1, "b": 2}, ["b"]),
        ({"a": 1, "b": 2}, {"a": False, "b": False}, {"a": 1, "b": 2}, ["a", "b"]),
        # Let go while the round was on its way (finished): nobody to tell.
        ({"a": 1, "b": 2}, {"a": True, "b": False}, {"a": 1}, []),
        # Kept anew meanwhile (written back and leased again): the old answer is not about it.
        ({"a": 1, "b": 2}, {"a": True, "b": False}, {"a": 1, "b": 7}, []),
        # Kept since the round was sent: the next round asks about it.
        ({"a": 1}, {"a": True}, {"a": 1, "c": 3}, []),
        # Not in the reply: unknown, asked again next round.
        ({"a": 1, "b": 2}, {"a": True}, {"a": 1, "b": 2}, []),
    ],
)
def test_a_loss_counts_only_for_the_registration_the_round_was_sent_for(
    sent: dict[str, int], reply: dict[str, bool], kept: dict[str, int], lost: list[str]
) -> None:
    assert lost_leases(sent, reply, kept) == lost


@pytest.fixture
def agent_a(redis_store: RedisStore) -> RedisStore:
    return redis_store


async def script_calls(raw: aioredis.Redis) -> int:
    """Lua script runs since the last CONFIG RESETSTAT (every store write is one)."""
    stats = await raw.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def lease_many(
    store: RedisStore, count: int, *, first: int = 0, owner: str = "agent-a", ttl_s: float = 30.0
) -> list[str]:
    ids = [f"s{i:04d}" for i in range(first, first + count)]
    for stream_id in ids:  # registered and leased in one step, as a finder does
        stream = make_stream(stream_id, path=f"/watch/{stream_id}.mp4")
        assert await store.claim_stream(stream, owner=owner, ttl_s=ttl_s) == (Claim.NEW, stream_id)
    return ids


async def test_every_lease_held_is_renewed_in_one_call_and_a_stolen_one_alone_is_lost(
    agent_a: RedisStore, raw: aioredis.Redis
) -> None:
    ids = await lease_many(agent_a, RENEW_BATCH)
    await raw.set("stream:s0007:lease", "agent-b|999999", px=30_000)  # another owner took it
    await raw.delete("stream:s0009:lease", "stream:s0009:meta")  # finished by another agent
    await raw.delete("stream:s0011:lease")  # lapsed, nobody took it: still ours
    await raw.pexpire("stream:s0002:lease", 500)
    assert await agent_a.renew_lease("s0001", 30.0)  # the script is loaded: no NOSCRIPT below
    await raw.config_resetstat()
    reply = await agent_a.renew_leases([*ids, "never-held"], 30.0)
    assert await script_calls(raw) == 1
    assert {sid for sid, ours in reply.items() if not ours} == {"s0007", "s0009", "never-held"}
    assert len(reply) == len(ids) + 1
    assert await raw.pttl("stream:s0002:lease") > 20_000  # extended
    assert (await raw.get("stream:s0011:lease")).startswith("agent-a|")  # taken back
    assert await raw.get("stream:s0007:lease") == "agent-b|999999"  # left to its owner
    assert await raw.exists("stream:s0009:lease") == 0  # not brought back to life
    # One more than a batch holds: a second script, not one per stream.
    extra = await lease_many(agent_a, 1, first=RENEW_BATCH)
    await raw.config_resetstat()
    reply = await agent_a.renew_leases([*ids, *extra], 30.0)
    assert await script_calls(raw) == 2
    assert reply[extra[0]]


async def test_one_agents_loop_renews_all_its_leases_once_a_round_and_reports_a_theft_once(
    agent_a: RedisStore, raw: aioredis.Redis
) -> None:
    ttl_s = 0.9  # a round every 0.3 s
    stopping = asyncio.Event()

    async def take_over(_: object) -> None:
        raise AssertionError("nothing stands by here")

    ownership = Ownership(
        agent_a, agent_id="host:1", ttl_s=ttl_s, stopping=stopping, take_over=take_over
    )
    ids = await lease_many(agent_a, 200, owner="host:1", ttl_s=ttl_s)
    lost: list[str] = []
    stolen = asyncio.Event()

    def on_lost(stream_id: str) -> None:
        lost.append(stream_id)
        stolen.set()

    await raw.config_resetstat()
    started = time.monotonic()
    for stream_id in ids:
        ownership.keep(stream_id, on_lost=lambda sid=stream_id: on_lost(sid))  # type: ignore[misc]
    # Three TTLs: without renewals every lease would have lapsed twice over.
    await asyncio.sleep(3 * ttl_s)
    elapsed = time.monotonic() - started
    calls = await script_calls(raw)
    assert 1 <= calls <= elapsed / (ttl_s / 3) + 1, calls  # one per round, not 200 per round
    values = await raw.mget([f"stream:{sid}:lease" for sid in ids])
    assert all(v is not None and v.startswith("host:1|") for v in values)
    await raw.set("stream:s0042:lease", "host:2|999999", px=30_000)
    await asyncio.wait_for(stolen.wait(), ttl_s)  # noticed within one round, as before
    await asyncio.sleep(ttl_s)  # two more rounds: told once, and the others are still kept
    assert lost == ["s0042"]
    assert await raw.get("stream:s0042:lease") == "host:2|999999"
    ownership.drop("s0042", held=False)
    stopping.set()
    await ownership.release_all()
    assert await raw.exists(*[f"stream:{sid}:lease" for sid in ids if sid != "s0042"]) == 0


# -- completed-file records written back to a store that forgot them (stream.forgotten) ---------


def done_file(folder: Path, name: str) -> CompletedRecord:
    path = folder / name
    path.write_bytes(b"x")
    return completed_of(make_stream(name, path=str(path)))


async def test_a_write_back_covers_every_stream_restored_before_it_began(
    agent_a: RedisStore, raw: aioredis.Redis, tmp_path: Path
) -> None:
    records = {r.path: r for r in (done_file(tmp_path, f"{i}.mp4") for i in range(50))}
    gone = completed_of(make_stream("gone", path=str(tmp_path / "gone.mp4")))  # moved away
    back = CompletedWriteBack(agent_a, lambda: {**records, gone.path: gone})
    await agent_a.restore_completed_files([])  # loads nothing: no script yet
    await agent_a.restore_completed_files(list(records.values())[:1])  # the script is loaded
    await raw.delete("streams:completed_files")
    await raw.config_resetstat()
    with capture_logs() as logs:
        # 200 streams written back in one renewal round, each asking.
        await asyncio.gather(*(back.write_back() for _ in range(200)))
    # The first ask's write, and one more for the 199 that asked while it ran.
    assert await script_calls(raw) == 2
    assert await agent_a.completed_files() == records
    assert [e["files"] for e in logs if e["event"] == "checkpoint.completed_restored"] == [50]
    with capture_logs() as logs:
        await back.write_back()  # a later loss: written again, but nothing was missing
    assert await script_calls(raw) == 3
    assert not [e for e in logs if e["event"] == "checkpoint.completed_restored"]


async def test_a_refused_write_back_is_said_once_and_tried_again_at_the_next_loss(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    record = done_file(tmp_path, "kept.mp4")
    back = CompletedWriteBack(store, lambda: {record.path: record})
    store.inject_error(CheckpointError("Redis refused: OOM command not allowed"))
    with capture_logs() as logs:
        await back.write_back()
    failed = [e for e in logs if e["event"] == "checkpoint.completed_restore_failed"]
    assert len(failed) == 1 and failed[0]["files"] == 1 and "OOM" in failed[0]["error"]
    assert await store.completed_files() == {}
    await back.write_back()
    assert await store.completed_files() == {record.path: record}
