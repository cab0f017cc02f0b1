"""Crash, restart, outage, shutdown: real `streamup run` processes killed at every instant that
matters, S3 behind a proxy that counts the bytes and can cut the network."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.agent import (
    AgentProcess,
    MiB,
    assert_exact,
    grow,
    metadata_docs,
    object_keys,
    wait_for,
    wait_metadata,
    write_slowly,
)
from tests.conftest import BOTH_SERVERS
from tests.proxy import FaultProxy

PART = 5 * MiB
# HTTP request and response headers, the metadata JSON, ListParts: what is not part payload.
OVERHEAD_BYTES = 512 * 1024


@pytest.fixture
def via_proxy(proxy: FaultProxy) -> dict[str, str]:
    return {"S3_ENDPOINT_URL": proxy.url}


def wait_exit(agent: AgentProcess, code: int, deadline_s: float = 60) -> None:
    assert agent.proc is not None
    wait_for(lambda: agent.proc.poll() is not None, deadline_s=deadline_s, what="the agent to exit")
    assert agent.proc.returncode == code, agent.log_text()[-2000:]


def finished_file(watch_dir: Path, tmp_path: Path, name: str, size: int) -> Path:
    """A finished recording copied into the folder (kept outside too, for comparison)."""
    source = tmp_path / f"source-{name}"
    source.write_bytes(os.urandom(size))
    shutil.copy(source, watch_dir / name)
    return source


@BOTH_SERVERS
def test_crash_after_a_part_upload_before_its_checkpoint_adopts_the_part(
    agent: Any,
    via_proxy: dict[str, str],
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    source = finished_file(watch_dir, tmp_path, "a.mp4", 4 * PART + 1234)
    first = agent(STREAMUP_CRASH_AT="after_part_upload:2", UPLOAD_CONCURRENCY="1", **via_proxy)
    wait_exit(first, 137)
    second = agent(UPLOAD_CONCURRENCY="1", **via_proxy)
    doc = wait_metadata(s3_client, bucket, "a.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    # Every part carried its proof (Content-MD5 to check, or the request for the server's own
    # CRC32C of what it received): 5 parts, 1 adopted.
    assert proxy.integrity_headers >= 5
    reconciled = second.events_named("stream.reconciled")
    assert reconciled and reconciled[0]["adopted"] == 1
    # Part 2 reached S3 before the crash and was adopted, not sent again.
    assert proxy.bytes_up <= source.stat().st_size + OVERHEAD_BYTES
    assert second.stop() == 0


@BOTH_SERVERS
@pytest.mark.parametrize("point", ["before_complete", "after_complete", "before_metadata"])
def test_crash_around_completion_ends_in_one_object_with_metadata(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str, point: str
) -> None:
    source = finished_file(watch_dir, tmp_path, "b.mp4", 2 * PART + 99)
    first = agent(STREAMUP_CRASH_AT=point)
    wait_exit(first, 137)
    second = agent()
    doc = wait_metadata(s3_client, bucket, "b.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    verified_again = second.events_named("stream.verified")
    if point == "before_complete":
        assert len(verified_again) == 1  # not completed yet: verify and complete now
    else:
        assert verified_again == []  # completed before the crash: never a second completion
    if point == "after_complete":
        assert second.events_named("stream.found_completed")
    assert second.stop() == 0


def test_kills_at_random_moments_while_a_file_grows_cost_at_most_a_part_each(
    agent: Any,
    via_proxy: dict[str, str],
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    target = watch_dir / "chaos.mp4"
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20261124")))
    kill_after_s = sorted(rng.uniform(3, 55) for _ in range(4))
    started = time.monotonic()
    current = agent(**via_proxy)
    writer = grow(target, 60 * MiB, MiB)
    for moment in kill_after_s:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        current.kill()
        current = agent(**via_proxy)
    writer.join()
    doc = wait_metadata(s3_client, bucket, "chaos.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    budget = target.stat().st_size + len(kill_after_s) * PART + OVERHEAD_BYTES
    print(
        f"chaos: {len(kill_after_s)} kills, file {target.stat().st_size} B, sent {proxy.bytes_up} B"
    )
    assert proxy.bytes_up <= budget, f"sent {proxy.bytes_up} bytes, budget {budget}"
    assert current.stop() == 0


@BOTH_SERVERS
def test_network_outage_stalls_the_stream_and_it_catches_up(
    agent: Any,
    via_proxy: dict[str, str],
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    target = watch_dir / "outage.mp4"
    process = agent(**via_proxy)
    writer = grow(target, 45 * MiB, int(1.2 * MiB))
    wait_for(lambda: process.events_named("part.uploaded"), deadline_s=20, what="a first part")
    proxy.cut()
    wait_for(lambda: process.events_named("stream.stalled"), deadline_s=20, what="a stall report")
    parts_before = len(process.events_named("part.uploaded"))
    time.sleep(30)  # the outage itself: nothing to wait for but the clock
    assert process.proc is not None and process.proc.poll() is None
    assert len(process.events_named("part.uploaded")) == parts_before  # nothing got through
    proxy.restore()
    writer.join()
    doc = wait_metadata(s3_client, bucket, "outage.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert process.events_named("stream.resumed")
    assert process.stop() == 0


@BOTH_SERVERS
def test_upload_that_s3_forgot_starts_afresh(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    target = watch_dir / "forgotten.mp4"
    handle = target.open("wb")
    first = agent()
    write_slowly(handle, total_bytes=3 * PART, rate_bytes_s=4 * MiB)
    wait_for(lambda: len(first.events_named("part.uploaded")) >= 2, deadline_s=20, what="2 parts")
    assert first.stop() == 0
    for upload in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3_client.abort_multipart_upload(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    second = agent()
    write_slowly(handle, total_bytes=PART, rate_bytes_s=4 * MiB)
    handle.close()
    doc = wait_metadata(s3_client, bucket, "forgotten.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert second.events_named("stream.upload_restarted")
    assert second.stop() == 0


def test_sigterm_mid_stream_exits_zero_and_the_stream_resumes(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    target = watch_dir / "term.mp4"
    handle = target.open("wb")
    first = agent()
    write_slowly(handle, total_bytes=2 * PART + 10, rate_bytes_s=4 * MiB)
    wait_for(lambda: first.events_named("part.uploaded"), deadline_s=20, what="a part")
    stopped_at = time.monotonic()
    assert first.stop() == 0
    assert time.monotonic() - stopped_at < 10
    assert metadata_docs(s3_client, bucket) == {}  # a growing stream is not completed on exit
    second = agent()
    write_slowly(handle, total_bytes=PART, rate_bytes_s=4 * MiB)
    handle.close()
    doc = wait_metadata(s3_client, bucket, "term.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert second.events_named("stream.resuming")
    assert second.stop() == 0


def test_second_signal_exits_at_once_and_checkpoints_stay_consistent(
    agent: Any,
    via_proxy: dict[str, str],
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    target = watch_dir / "twice.mp4"
    handle = target.open("wb")
    first = agent(**via_proxy)
    write_slowly(handle, total_bytes=PART + 10, rate_bytes_s=8 * MiB)
    wait_for(lambda: first.events_named("part.uploaded"), deadline_s=20, what="a part")
    proxy.cut()  # the next part hangs in its retry loop: a graceful stop would wait for it
    write_slowly(handle, total_bytes=PART, rate_bytes_s=8 * MiB)
    wait_for(lambda: first.events_named("stream.stalled"), deadline_s=20, what="a stall")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: first.events_named("agent.stopping"), deadline_s=10, what="the first signal")
    first.proc.send_signal(signal.SIGTERM)
    wait_exit(first, 130, deadline_s=5)
    proxy.restore()
    second = agent(**via_proxy)
    write_slowly(handle, total_bytes=PART + 5, rate_bytes_s=8 * MiB)
    handle.close()
    doc = wait_metadata(s3_client, bucket, "twice.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert second.stop() == 0


@BOTH_SERVERS
def test_file_lost_while_the_agent_was_down_keeps_what_s3_holds_as_partial(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    target = watch_dir / "lost.mp4"
    handle = target.open("wb")
    first = agent()
    write_slowly(handle, total_bytes=2 * PART + 100, rate_bytes_s=4 * MiB)
    wait_for(lambda: len(first.events_named("part.uploaded")) >= 2, deadline_s=20, what="2 parts")
    first.kill()
    handle.close()
    kept = target.read_bytes()[: 2 * PART]
    target.unlink()
    second = agent()
    doc = wait_metadata(s3_client, bucket, "lost.mp4", deadline_s=30)
    assert doc["partial"] is True
    assert doc["end_reason"] == "file_lost"
    assert doc["sha256"] is None
    body = s3_client.get_object(Bucket=bucket, Key=doc["s3_key_prefix"])["Body"].read()
    assert body == kept
    assert doc["total_size_bytes"] == len(kept)
    assert second.stop() == 0


def test_orphan_uploads_under_the_prefix_are_aborted_and_others_are_left(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    s3_client.create_bucket(Bucket=bucket)
    orphan = s3_client.create_multipart_upload(Bucket=bucket, Key="streams/gone/old.mp4")
    s3_client.upload_part(
        Bucket=bucket,
        Key="streams/gone/old.mp4",
        PartNumber=1,
        UploadId=orphan["UploadId"],
        Body=os.urandom(PART),
    )
    foreign = s3_client.create_multipart_upload(Bucket=bucket, Key="elsewhere/keep.mp4")
    source = finished_file(watch_dir, tmp_path, "mine.mp4", 2 * PART + 1)
    process = agent(ORPHAN_UPLOAD_AGE_SECONDS="1")

    def open_uploads() -> set[str]:
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return {u["UploadId"] for u in uploads}

    wait_for(
        lambda: orphan["UploadId"] not in open_uploads(),
        deadline_s=20,
        what="the orphan to be aborted",
    )
    assert foreign["UploadId"] in open_uploads()
    doc = wait_metadata(s3_client, bucket, "mine.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    aborted = process.events_named("upload.orphan_aborted")
    assert [e["key"] for e in aborted] == ["streams/gone/old.mp4"]
    assert process.stop() == 0


def test_redis_outage_stalls_checkpoints_and_the_stream_catches_up(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    port = servers.free_port()
    redis_proc = servers.start_redis(redis_dir, port, appendonly=True)
    try:
        target = watch_dir / "redis-outage.mp4"
        process = agent(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        writer = grow(target, 30 * MiB, int(1.5 * MiB))
        wait_for(lambda: process.events_named("part.uploaded"), deadline_s=20, what="a part")
        servers.stop(redis_proc)
        wait_for(lambda: process.events_named("stream.stalled"), deadline_s=20, what="a stall")
        time.sleep(5)  # the outage itself
        assert process.proc is not None and process.proc.poll() is None
        redis_proc = servers.start_redis(redis_dir, port, appendonly=True)
        writer.join()
        doc = wait_metadata(s3_client, bucket, "redis-outage.mp4", deadline_s=60)
        assert_exact(s3_client, bucket, doc, target, tmp_path)
        assert process.events_named("stream.resumed")
        assert process.stop() == 0
    finally:
        servers.stop(redis_proc)


def test_file_replaced_while_the_agent_was_down_ends_old_stream_and_starts_new_one(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    target = watch_dir / "swapped.mp4"
    handle = target.open("wb")
    first = agent()
    write_slowly(handle, total_bytes=PART + 100, rate_bytes_s=4 * MiB)
    wait_for(lambda: first.events_named("part.uploaded"), deadline_s=20, what="a part")
    first.kill()
    handle.close()
    kept = target.read_bytes()[:PART]
    newcomer = tmp_path / "newcomer.mp4"
    newcomer.write_bytes(os.urandom(PART + 7))
    os.replace(newcomer, target)  # a new inode under the same name
    second = agent()

    def both() -> list[dict[str, Any]] | None:
        docs = [
            d for k, d in metadata_docs(s3_client, bucket).items() if k.endswith("/swapped.mp4")
        ]
        return docs if len(docs) == 2 else None

    docs = {d["end_reason"]: d for d in wait_for(both, deadline_s=30, what="two objects")}
    assert set(docs) == {"file_lost", "idle"}
    old = s3_client.get_object(Bucket=bucket, Key=docs["file_lost"]["s3_key_prefix"])
    assert old["Body"].read() == kept and docs["file_lost"]["partial"] is True
    assert_exact(s3_client, bucket, docs["idle"], target, tmp_path)
    assert second.stop() == 0
