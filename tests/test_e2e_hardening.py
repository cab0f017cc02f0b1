"""Conditions recorders meet in the field, with real `streamup run` processes: a small open-files
limit, a restart on the same host with a shared Redis, a Redis that lost its data, an S3 that
answers 5xx from the first request on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from streamup.checkpoint.sqlite import SqliteStore
from streamup.files.budget import descriptors_in_use
from tests.agent import (
    AgentProcess,
    MiB,
    assert_exact,
    grow,
    kill_after_first_part,
    object_keys,
    wait_for,
    wait_metadata,
    write_slowly,
)
from tests.proxy import FaultProxy
from tests.servers import free_port

# The suite's size; the figure (1,000 files under 256) is the same test with
# STREAMUP_TEST_SMALL_FILES=1000 STREAMUP_TEST_OPEN_FILES=256. Either way there are more files
# than descriptors.
SMALL_FILES = int(os.environ.get("STREAMUP_TEST_SMALL_FILES", "150"))
OPEN_FILES_LIMIT = int(os.environ.get("STREAMUP_TEST_OPEN_FILES", "128"))


class PeakDescriptors:
    """Samples /proc/<pid>/fd of a running agent until stopped; keeps the largest count."""

    def __init__(self, process: AgentProcess) -> None:
        assert process.proc is not None
        self.pid = process.proc.pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, descriptors_in_use(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _finished_files(folder: Path, count: int) -> dict[str, bytes]:
    """`count` tiny recordings, written an hour ago (finished: nothing waits for them to idle)."""
    written = {}
    past = time.time() - 3600
    for i in range(count):
        body = os.urandom(100 + i)
        path = folder / f"clip-{i:04d}.mp4"
        path.write_bytes(body)
        os.utime(path, (past, past))
        written[path.name] = body
    return written


def test_more_finished_files_than_descriptors_all_arrive_exact(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    written = _finished_files(watch_dir, SMALL_FILES)
    started = time.monotonic()
    limit = ("prlimit", f"--nofile={OPEN_FILES_LIMIT}")
    process: AgentProcess = agent(limit, FFPROBE_PATH="/bin/true", LOG_LEVEL="INFO")
    peak = PeakDescriptors(process)
    try:
        wait_for(
            lambda: len(_keys(s3_client, bucket, ".metadata.json")) >= SMALL_FILES,
            deadline_s=SMALL_FILES * 0.5, what=f"{SMALL_FILES} metadata documents", every_s=1.0,
        )  # fmt: skip
        videos = _keys(s3_client, bucket, ".mp4")
    finally:
        highest = peak.stop()
        process.stop()
    elapsed_s = time.monotonic() - started
    print(f"{SMALL_FILES} files in {elapsed_s:.1f} s, peak descriptors {highest}")
    assert SMALL_FILES > OPEN_FILES_LIMIT
    assert len(videos) == SMALL_FILES
    for key in videos:
        name = key.rsplit("/", 1)[-1]
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(written[name]).digest(), key
    assert 0 < highest < OPEN_FILES_LIMIT
    log = process.log_text()
    assert "Traceback" not in log
    assert "never retrieved" not in log


def _keys(s3: Any, bucket: str, suffix: str) -> list[str]:
    keys: list[str] = []
    token: dict[str, str] = {}
    try:
        while True:
            page = s3.list_objects_v2(Bucket=bucket, **token)
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}
    except s3.exceptions.NoSuchBucket:
        return []


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def test_a_restart_on_the_same_host_takes_its_dead_predecessors_lease_at_once(
    agent: Any, redis_url: str, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # The default AGENT_ID (host:pid) and the default lease TTL (15 s): a restart that waited
    # for its predecessor's lease would wait 15 s.
    target = watch_dir / "restart.mp4"
    first: AgentProcess = agent(REDIS_URL=redis_url)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    with target.open("wb") as handle:
        kill_after_first_part(first, handle)
        handle.write(os.urandom(5 * MiB))  # part 2 is ready the moment an agent looks
        handle.flush()
        restarted_at = time.time()
        second: AgentProcess = agent(REDIS_URL=redis_url)
        part = wait_for(
            lambda: [e for e in second.events_named("part.uploaded") if e["part"] == 2],
            deadline_s=15, what="part 2 after the restart",
        )[0]  # fmt: skip
        started = second.events_named("agent.started")[0]
    taken = second.events_named("lease.taken_from_dead_agent")
    assert len(taken) == 1 and taken[0]["previous_owner"].endswith(f":{first.proc.pid}")
    # Resumed during start-up, not after a TTL: the lease was taken before the agent was up.
    assert _at(taken[0]) <= _at(started)
    print(
        f"restart -> part 2 uploaded: {_at(part) - restarted_at:.2f} s after the launch,"
        f" {_at(part) - _at(started):.2f} s after agent.started"
    )
    assert _at(part) - _at(started) < 2.0
    doc = wait_metadata(s3_client, bucket, "restart.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert second.stop() == 0


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_a_store_that_lost_the_stream_is_written_back_and_the_same_upload_goes_on(
    store: str,
    request: pytest.FixtureRequest,
    agent: Any,
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    target = watch_dir / "lost.mp4"
    extra = {"REDIS_URL": request.getfixturevalue("redis_url")} if store == "redis" else {}
    process: AgentProcess = agent(S3_ENDPOINT_URL=proxy.url, **extra)
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="start")
    writer = grow(target, 11 * MiB, 4 * MiB)
    wait_for(lambda: process.events_named("part.uploaded"), deadline_s=20, what="a part")
    if store == "redis":
        redis_sync.Redis.from_url(extra["REDIS_URL"]).flushall()
        said = "checkpoint.stream_restored"
    else:
        for name in ("streamup.db", "streamup.db-wal", "streamup.db-shm"):
            (tmp_path / "state" / name).unlink(missing_ok=True)
        said = "checkpoint.store_rebuilt"
    writer.join()
    doc = wait_metadata(s3_client, bucket, "lost.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    size = target.stat().st_size
    print(f"{store}: sent/size after the loss: {proxy.bytes_up / size:.3f}")
    assert proxy.bytes_up / size <= 1.1
    assert len(object_keys(s3_client, bucket)) == 2  # one object and its metadata
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert len(process.events_named(said)) == 1
    assert not process.events_named("stream.lease_lost")
    assert not process.events_named("stream.failed_step")
    assert len(process.events_named("stream.discovered")) == 1  # no second stream of the file
    assert process.stop() == 0
    if store == "sqlite":  # the new file holds the completion: a restart would not send again
        assert str(target) in asyncio.run(_completed_paths(tmp_path / "state"))


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_completed_files_the_store_forgot_are_written_back_and_not_sent_again_after_a_restart(
    store: str,
    request: pytest.FixtureRequest,
    agent: Any,
    proxy: FaultProxy,
    watch_dir: Path,
    s3_client: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    env = {"S3_ENDPOINT_URL": proxy.url}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    first: AgentProcess = agent(**env)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    done = watch_dir / "done.mp4"
    _finished_file(done, 1 * MiB)
    wait_metadata(s3_client, bucket, "done.mp4", deadline_s=30)
    # A live stream for the agent to notice the loss by (a fenced write or a renewal round).
    live = watch_dir / "live.mp4"
    writer = grow(live, 8 * MiB, 4 * MiB)
    wait_for(
        lambda: [e for e in first.events_named("part.uploaded") if e["path"] == str(live)],
        deadline_s=20, what="a part of the live file",
    )  # fmt: skip
    if store == "redis":
        redis_sync.Redis.from_url(env["REDIS_URL"]).flushall()
        said, count = "checkpoint.completed_restored", "files"
    else:
        for name in ("streamup.db", "streamup.db-wal", "streamup.db-shm"):
            (tmp_path / "state" / name).unlink(missing_ok=True)
        said, count = "checkpoint.store_rebuilt", "completed_files"
    told = wait_for(lambda: first.events_named(said), deadline_s=30, what="the write-back")
    # done.mp4; and live.mp4 too where a busy machine let it complete first (its completion can
    # be the very write that finds the loss). That done.mp4 was among them, the restart shows.
    assert [e[count] for e in told] in ([1], [2])
    writer.join()
    wait_metadata(s3_client, bucket, "live.mp4", deadline_s=60)
    assert first.stop() == 0
    second: AgentProcess = agent(**env)
    wait_for(lambda: second.events_named("agent.started"), deadline_s=30, what="the restart")
    # A file found after the start-up scan: once it is up, done.mp4 was looked at long before.
    _finished_file(watch_dir / "after.mp4", 1 * MiB)
    wait_metadata(s3_client, bucket, "after.mp4", deadline_s=30)
    discovered = [e["path"] for e in second.events_named("stream.discovered")]
    assert discovered == [str(watch_dir / "after.mp4")]
    assert len(object_keys(s3_client, bucket)) == 6  # three objects and their metadata
    assert second.stop() == 0


def test_a_redis_flushed_while_the_agent_idles_gets_the_completed_records_back(
    agent: Any, redis_url: str, watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    """No stream in flight to find the loss by a fenced write: the agent's mark tells."""
    first: AgentProcess = agent(REDIS_URL=redis_url)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    _finished_file(watch_dir / "done.mp4", 1 * MiB)
    wait_metadata(s3_client, bucket, "done.mp4", deadline_s=30)
    wait_for(lambda: first.events_named("stream.completed"), deadline_s=10, what="completion")
    redis_sync.Redis.from_url(redis_url).flushall()
    told = wait_for(
        lambda: first.events_named("checkpoint.completed_restored"), deadline_s=10,
        what="the write-back",
    )  # fmt: skip
    assert [e["files"] for e in told] == [1]
    assert len(first.events_named("checkpoint.store_emptied")) == 1
    assert first.stop() == 0
    second: AgentProcess = agent(REDIS_URL=redis_url)
    wait_for(lambda: second.events_named("agent.started"), deadline_s=30, what="the restart")
    _finished_file(watch_dir / "after.mp4", 1 * MiB)
    wait_metadata(s3_client, bucket, "after.mp4", deadline_s=30)
    discovered = [e["path"] for e in second.events_named("stream.discovered")]
    assert discovered == [str(watch_dir / "after.mp4")]
    assert len(object_keys(s3_client, bucket)) == 4  # two objects and their metadata
    assert second.stop() == 0


def _finished_file(path: Path, size: int) -> None:
    """A recording written an hour ago: nothing waits for it to idle."""
    path.write_bytes(os.urandom(size))
    past = time.time() - 3600
    os.utime(path, (past, past))


def test_a_kill_while_a_lost_stream_is_written_back_resumes_without_resending(
    agent: Any, redis_url: str, proxy: FaultProxy, watch_dir: Path, tmp_path: Path,
    s3_client: Any, bucket: str,
) -> None:  # fmt: skip
    target = watch_dir / "rewritten.mp4"
    env = {"REDIS_URL": redis_url, "S3_ENDPOINT_URL": proxy.url}
    first: AgentProcess = agent(STREAMUP_CRASH_AT="after_restored_record", **env)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    with target.open("wb") as handle:
        write_slowly(handle, total_bytes=5 * MiB + 100, rate_bytes_s=8 * MiB)
        wait_for(lambda: first.events_named("part.uploaded"), deadline_s=20, what="a part")
        redis_sync.Redis.from_url(redis_url).flushall()
        write_slowly(handle, total_bytes=5 * MiB, rate_bytes_s=8 * MiB)  # part 2: fenced out
        assert first.proc is not None
        first.proc.wait(30)  # died at the crash point, the record written back, no part yet
        assert first.events_named("test.crash")
        second: AgentProcess = agent(**env)
        wait_for(lambda: second.events_named("stream.resuming"), deadline_s=30, what="resume")
        handle.write(os.urandom(1 * MiB))
    doc = wait_metadata(s3_client, bucket, "rewritten.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert proxy.bytes_up / target.stat().st_size <= 1.1
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert len(object_keys(s3_client, bucket)) == 2
    assert second.stop() == 0


async def _completed_paths(state_dir: Path) -> set[str]:
    store = SqliteStore(state_dir, exclusive=False)
    await store.open()
    try:
        return set(await store.completed_files())
    finally:
        await store.close()


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_start_up_waits_for_an_s3_that_refuses_and_says_so(
    agent: Any, proxy: FaultProxy, s3_client: Any, bucket: str
) -> None:
    proxy.cut()  # nothing listens: every connection is refused
    port = free_port()
    process: AgentProcess = agent(S3_ENDPOINT_URL=proxy.url, PROM_PORT=str(port))
    waiting = wait_for(
        lambda: process.events_named("agent.waiting"), deadline_s=30, what="agent.waiting"
    )[0]
    assert waiting["happened"] == f"S3 at S3_ENDPOINT_URL={proxy.url} refused the connection"
    assert wait_for(lambda: _health(port)[0] == 503 and _health(port), deadline_s=10,
                    what="/healthz") == (503, "starting\n")  # fmt: skip
    proxy.restore()
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="the start")
    assert _health(port) == (200, "ok\n")
    assert len(process.events_named("agent.waiting")) == 1  # one line for the episode
    assert process.events_named("agent.done_waiting")
    assert process.stop() == 0


def test_thirty_percent_5xx_from_the_first_request_on_every_object_exact(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    proxy.fail_ratio = 0.3
    names = [f"busy-{i}.mp4" for i in range(2)]
    past = time.time() - 3600
    for i, name in enumerate(names):
        (watch_dir / name).write_bytes(os.urandom(6 * MiB + i * 1000))  # two parts each
        os.utime(watch_dir / name, (past, past))
    process: AgentProcess = agent(S3_ENDPOINT_URL=proxy.url)
    docs = [wait_metadata(s3_client, bucket, name, deadline_s=90) for name in names]
    for name, doc in zip(names, docs, strict=True):
        assert_exact(s3_client, bucket, doc, watch_dir / name, tmp_path)
    waited = process.events_named("agent.waiting")
    print(f"{proxy.failed} requests answered 5xx; start-up waited {len(waited)} episode(s)")
    assert proxy.failed > 0
    assert all(e["happened"].split(" answered ")[1] in ("500 InternalError", "503 SlowDown")
               for e in waited)  # fmt: skip
    assert "Traceback" not in process.log_text()
    assert process.stop() == 0


def test_an_idle_recording_gives_its_descriptor_to_a_waiting_file(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # 64 descriptors leave room for one open recording (files.budget): without giving way,
    # the finished file would wait for as long as the idle recording's writer keeps it open.
    process: AgentProcess = agent(("prlimit", "--nofile=64"), FFPROBE_PATH="/bin/true")
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="start")
    idle = watch_dir / "idle.mp4"
    with idle.open("wb") as writer:
        writer.write(os.urandom(100_000))
        writer.flush()
        wait_for(lambda: process.events_named("stream.discovered"), deadline_s=20, what="idle")
        finished = watch_dir / "finished.mp4"
        finished.write_bytes(os.urandom(200_000))
        doc = wait_metadata(s3_client, bucket, "finished.mp4", deadline_s=30)
        assert_exact(s3_client, bucket, doc, finished, tmp_path)
        assert not _keys(s3_client, bucket, "idle.mp4.metadata.json")  # still being written
        writer.write(os.urandom(50_000))
    doc = wait_metadata(s3_client, bucket, "idle.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, idle, tmp_path)
    assert "Traceback" not in process.log_text()
    assert process.stop() == 0


def test_a_file_to_delete_whose_record_the_store_lost_stays_and_is_not_sent_again(
    agent: Any, redis_url: str, watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    """AFTER_UPLOAD=delete, and Redis flushed between the completion and the action, refusing
    writes (maxmemory): with no record to checkpoint the intent in, the file stays
    (`record_lost`), and the record the agent keeps in memory still stops it from being
    uploaded a second time. Once Redis takes writes again, the record goes back, and the file
    is deleted at the next look."""
    process: AgentProcess = agent(
        REDIS_URL=redis_url, AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="2"
    )
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="start")
    done = watch_dir / "done.mp4"
    _finished_file(done, 1 * MiB)
    wait_metadata(s3_client, bucket, "done.mp4", deadline_s=30)
    raw = redis_sync.Redis.from_url(redis_url)
    raw.config_set("maxmemory", 1)  # FLUSHALL still runs; the write-back is refused
    raw.flushall()
    kept = wait_for(
        lambda: [e for e in process.events_named("file.kept") if e["reason"] == "record_lost"],
        deadline_s=20, what="the file kept for its lost record",
    )  # fmt: skip
    assert kept[0]["path"] == str(done)
    time.sleep(2.5)  # two more scans of the folder (SCAN_INTERVAL_SECONDS=1)
    assert done.exists()
    assert [e["path"] for e in process.events_named("stream.discovered")] == [str(done)]
    assert not process.events_named("file.deleted")
    assert process.events_named("checkpoint.completed_restore_failed")
    raw.config_set("maxmemory", 0)
    wait_for(lambda: process.events_named("checkpoint.completed_restored"), deadline_s=10,
             what="the record written back")  # fmt: skip
    wait_for(lambda: process.events_named("file.deleted"), deadline_s=30, what="the delete")
    assert not done.exists()
    assert [e["path"] for e in process.events_named("stream.discovered")] == [str(done)]
    assert len(object_keys(s3_client, bucket)) == 2
    assert process.stop() == 0
