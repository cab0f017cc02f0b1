"""The pieces behind the field conditions of tests/test_e2e_hardening.py, each on its own: the
descriptor budget, the identity check of a reopened file, the liveness marks, the words for
what a server did, the full-disk message."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from streamup.checkpoint.sqlite import SqliteStore
from streamup.errors import CheckpointError, StorageError
from streamup.files.budget import (
    DESCRIPTORS_PER_FILE,
    MAX_OPEN_FILES,
    RESERVED_DESCRIPTORS,
    FileBudget,
    descriptors_in_use,
    files_budget,
)
from streamup.files.liveness import AgentMarks, mark_path
from streamup.files.source import stat_path
from streamup.ops.startup import StartupWait
from streamup.s3.client import S3Storage
from tests.servers import free_port


@pytest.mark.parametrize(
    ("limit", "pooled", "expected"),
    [
        (256, 12, (256 - RESERVED_DESCRIPTORS - 12) // DESCRIPTORS_PER_FILE),
        (1024, 28, (1024 - RESERVED_DESCRIPTORS - 28) // DESCRIPTORS_PER_FILE),
        (64, 30, 1),  # a tiny limit is slow, never stuck
        (1 << 20, 12, MAX_OPEN_FILES),
    ],
)
def test_the_files_budget_leaves_the_reserve_and_the_pools_free(
    limit: int, pooled: int, expected: int
) -> None:
    budget = files_budget(limit, pooled)
    assert budget == expected
    assert budget == 1 or RESERVED_DESCRIPTORS + pooled + budget * DESCRIPTORS_PER_FILE <= limit


async def test_streams_past_the_budget_wait_without_a_descriptor(tmp_path: Path) -> None:
    paths = [tmp_path / f"f{i}.mp4" for i in range(5)]
    for path in paths:
        path.write_bytes(b"x" * 10)
    budget = FileBudget(2)
    before = descriptors_in_use()
    states = [stat_path(str(p)) for p in paths]
    opening = [
        asyncio.create_task(budget.open(str(p), s.identity, same_device=True))  # type: ignore[union-attr]
        for p, s in zip(paths, states, strict=True)
    ]
    await asyncio.sleep(0.05)
    done = [t for t in opening if t.done()]
    assert len(done) == 2 and budget.open_now == 2
    assert descriptors_in_use() == before + 2  # the three waiting hold nothing
    for task in done:
        source = task.result()
        assert source is not None
        source.close()
    await asyncio.sleep(0.05)
    assert sum(t.done() for t in opening) == 4
    for task in opening:
        source = await task
        assert source is not None
        source.close()
    assert budget.open_now == 0 and descriptors_in_use() == before


async def test_a_file_replaced_or_deleted_while_it_waited_is_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"first")
    state = stat_path(str(path))
    assert state is not None
    path.rename(tmp_path / "kept.bin")  # the file lives on (its inode is not reused)
    budget = FileBudget(1)
    assert await budget.open(str(path), state.identity, same_device=True) is None  # gone
    path.write_bytes(b"second")  # another file took the path
    assert await budget.open(str(path), state.identity, same_device=True) is None
    assert budget.open_now == 0
    now = stat_path(str(path))
    assert now is not None
    source = await budget.open(str(path), now.identity, same_device=True)  # the place is free
    assert source is not None
    source.close()


def _holder(folder: Path, agent_id: str) -> subprocess.Popen[bytes]:
    """Another process holding its own liveness mark until killed."""
    code = (
        "import time; from pathlib import Path; from streamup.files.liveness import AgentMarks;"
        f"m = AgentMarks(Path({str(folder)!r}), {agent_id!r}); assert m.hold();"
        "print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"held\n"
    return child


def test_an_agent_is_dead_only_once_the_kernel_dropped_its_lock(tmp_path: Path) -> None:
    folder = tmp_path / "agents"
    ours = AgentMarks(folder, "host:1")
    assert ours.hold()
    other = _holder(folder, "host:2")
    try:
        assert not ours.is_dead("host:2")  # alive: its lock is held
        assert not ours.is_dead("host:3")  # no mark at all: cannot tell, so alive
        assert not ours.is_dead("host:1")  # never ourselves
    finally:
        other.kill()
        other.wait()
        assert other.stdout is not None
        other.stdout.close()
    assert mark_path(folder, "host:2").exists()
    assert ours.is_dead("host:2")  # SIGKILL: the kernel dropped the lock
    ours.release()
    assert not mark_path(folder, "host:1").exists()


def test_start_up_says_what_the_server_did_once_per_episode() -> None:
    wait = StartupWait("S3_ENDPOINT_URL=http://s3", "redis")
    busy = StorageError("x", code="SlowDown", retryable=True, happened="answered 503 SlowDown")
    internal = StorageError("x", code="InternalError", retryable=True,
                            happened="answered 500 InternalError")  # fmt: skip
    refused = StorageError("x", code="Network", retryable=True, happened="refused the connection")
    note = wait.note("bucket")
    for exc in (refused, refused, busy, internal, busy):
        note(exc, 1, 0.5)
    assert wait.last == "bucket: S3 at S3_ENDPOINT_URL=http://s3 answered 503 SlowDown (x)"
    assert wait.attempts == 5 and wait.waiting


async def test_a_refused_connection_is_called_so() -> None:
    storage = S3Storage(
        bucket="b-refused", region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="testing", secret_access_key="testing",
    )  # fmt: skip
    await storage.open()
    try:
        with pytest.raises(StorageError) as caught:
            await storage.ensure_bucket()
    finally:
        await storage.close()
    assert caught.value.retryable
    assert caught.value.happened == "refused the connection"


async def test_a_full_disk_under_state_dir_is_named_a_full_disk(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "streamup.db").symlink_to("/dev/full")  # every write: SQLITE_FULL, as on a full disk
    store = SqliteStore(state)
    with pytest.raises(CheckpointError) as caught:
        await store.open()
    message = str(caught.value)
    assert f"the disk holding STATE_DIR={state} is full" in message
    assert "create and write" not in message
