"""Redis behind Sentinel: the store finds the master through a real redis-sentinel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from streamup.checkpoint.redis import RedisStore
from streamup.errors import CheckpointError
from streamup.models import FileIdentity, PartRecord, Status, StreamRecord, utc_now
from tests import servers


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A master redis-server and one sentinel watching it; yields (sentinel URL, master port)."""
    master_port, sentinel_port = servers.free_port(), servers.free_port()
    master = servers.start_redis(tmp_path, master_port)
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor camera-fleet 127.0.0.1 {master_port} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        servers.wait_for_port(sentinel_port, proc)
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/camera-fleet/0", master_port
    finally:
        servers.stop(proc)
        servers.stop(master)


def record(stream_id: str) -> StreamRecord:
    now = utc_now()
    return StreamRecord(
        stream_id=stream_id, path="/w/a.mp4", relative_path="a.mp4", bucket="b",
        key=f"streams/{stream_id}/a.mp4", status=Status.ACTIVE, identity=FileIdentity(1, 2),
        part_size_bytes=5 * 1024 * 1024, part_size_fixed=False, started_at=now,
        last_activity_at=now,
    )  # fmt: skip


async def test_store_reaches_the_master_through_sentinel(sentinel: tuple[str, int]) -> None:
    url, master_port = sentinel
    store = RedisStore(url)
    await store.open()
    try:
        await store.save_stream(record("s1"))
        part = PartRecord(1, 0, 5 * 1024 * 1024, '"e1"', "0" * 32, utc_now())
        await store.record_part("s1", part, part.size_bytes, part.uploaded_at)
        assert (await store.load_parts("s1"))[1] == part
    finally:
        await store.close()
    master = redis_sync.Redis(port=master_port, decode_responses=True)
    try:
        assert master.hget("stream:s1:meta", "status") == "active"
        assert master.sismember("streams:active", "s1")
    finally:
        master.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:1/",  # no master name
        "redis+sentinel://127.0.0.1/camera-fleet",  # no port
        "redis+sentinel://127.0.0.1:1/camera-fleet/zero",  # db is not a number
    ],
)
async def test_unreadable_sentinel_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(CheckpointError, match="REDIS_URL"):
        await RedisStore(url).open()
