"""Finished files S3 already holds, after the checkpoint store lost their records while no agent
ran (STATE_DIR deleted, Redis flushed): recognised from the metadata document and the file's
bytes, not uploaded again; a file whose bytes differ goes up as a new recording (real agents,
moto, redis-server; stream.recognition)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests.agent import (
    AgentProcess,
    MiB,
    assert_exact,
    grow,
    object_keys,
    wait_for,
    wait_metadata,
)
from tests.conftest import BOTH_SERVERS
from tests.servers import free_port
from tests.test_operator import http_get, sample_value

HOUR_AGO = time.time() - 3600


def finished_file(path: Path, size: int) -> None:
    """A recording written an hour ago: nothing waits for it to idle."""
    path.write_bytes(os.urandom(size))
    os.utime(path, (HOUR_AGO, HOUR_AGO))


def flip_a_byte(path: Path, offset: int) -> None:
    """The same size and mtime, one byte changed: only reading the file tells."""
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def lose_the_store(store: str, state_dir: Path, redis_url: str | None) -> None:
    if store == "redis":
        assert redis_url is not None
        redis_sync.Redis.from_url(redis_url).flushall()
        return
    for name in ("streamup.db", "streamup.db-wal", "streamup.db-shm"):
        (state_dir / name).unlink(missing_ok=True)


def paths_of(process: AgentProcess, event: str) -> list[str]:
    return sorted(e["path"] for e in process.events_named(event))


def uploaded_then_forgotten(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> Path:
    """done.mp4 (two parts) uploaded by an agent, then its SQLite file deleted while none runs."""
    first: AgentProcess = agent()
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    done = watch_dir / "done.mp4"
    finished_file(done, 6 * MiB)
    wait_metadata(s3_client, bucket, "done.mp4", deadline_s=30)
    assert first.stop() == 0
    lose_the_store("sqlite", tmp_path / "state", None)
    return done


NUMBERED = "{prefix}/{path}"  # the key is the path's; a taken one gets `-2`


@pytest.mark.parametrize(
    ("store", "template"),
    [("sqlite", None), ("redis", None), ("sqlite", NUMBERED)],
    ids=["sqlite", "redis", "numbered-keys"],
)
def test_files_s3_holds_are_recognised_after_the_store_was_lost_and_changed_ones_go_up_anew(
    store: str,
    template: str | None,
    request: pytest.FixtureRequest,
    agent: Any,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    env = {"REDIS_URL": redis_url} if redis_url else {}
    if template:
        env["S3_KEY_TEMPLATE"] = template
    first: AgentProcess = agent(**env)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    same, changed = watch_dir / "same.mp4", watch_dir / "changed.mp4"
    finished_file(same, 6 * MiB)  # two parts
    finished_file(changed, 6 * MiB)
    wait_metadata(s3_client, bucket, "same.mp4", deadline_s=30)
    wait_metadata(s3_client, bucket, "changed.mp4", deadline_s=30)
    assert first.stop() == 0
    [same_key] = [e["key"] for e in first.events_named("stream.discovered")
                  if e["path"] == str(same)]  # fmt: skip

    lose_the_store(store, tmp_path / "state", redis_url)
    flip_a_byte(changed, 5 * MiB + 17)  # in the second part
    never = watch_dir / "never.mp4"  # written while no agent ran: goes up as ever
    finished_file(never, 1 * MiB)

    second: AgentProcess = agent(**env)
    wait_for(lambda: second.events_named("agent.started"), deadline_s=30, what="the restart")
    wait_for(lambda: len(second.events_named("stream.completed")) == 2, deadline_s=30,
             what="changed.mp4 and never.mp4 uploaded")  # fmt: skip
    assert paths_of(second, "stream.recognised") == [str(same)]
    assert paths_of(second, "stream.discovered") == [str(changed), str(never)]
    [recognised] = second.events_named("stream.recognised")
    assert (recognised["key"], recognised["proof"]) == (same_key, "checksum_compared")
    keys = object_keys(s3_client, bucket)
    assert len(keys) == 8  # same, changed twice, never, and their metadata
    if template == NUMBERED:
        assert "streams/changed-2.mp4" in keys
    assert second.stop() == 0

    # The recognised file's record was checkpointed: the next start does not even look.
    third: AgentProcess = agent(**env)
    wait_for(lambda: third.events_named("agent.started"), deadline_s=30, what="a third start")
    finished_file(watch_dir / "after.mp4", 1 * MiB)
    wait_metadata(s3_client, bucket, "after.mp4", deadline_s=30)
    assert paths_of(third, "stream.discovered") == [str(watch_dir / "after.mp4")]
    assert not third.events_named("stream.recognised")
    assert third.stop() == 0


@BOTH_SERVERS  # the multipart ETag and CRC32C the parts must give are each server's own
def test_a_kill_before_the_recognised_record_is_written_recognises_again(
    s3_backend: str, agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    uploaded_then_forgotten(agent, watch_dir, tmp_path, s3_client, bucket)
    killed: AgentProcess = agent(STREAMUP_CRASH_AT="before_recognised_record")
    assert killed.wait() == 137
    again: AgentProcess = agent()
    wait_for(lambda: again.events_named("stream.recognised"), deadline_s=30, what="recognition")
    finished_file(watch_dir / "after.mp4", 1 * MiB)
    wait_metadata(s3_client, bucket, "after.mp4", deadline_s=30)
    assert paths_of(again, "stream.discovered") == [str(watch_dir / "after.mp4")]
    assert len(object_keys(s3_client, bucket)) == 4
    assert again.stop() == 0


def test_a_recognised_file_is_deleted_after_upload_like_any_other(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    """The record carries the proof, SHA-256 and digests from the metadata document and
    HeadObject: the local-file action proves the object against it as for its own streams."""
    done = uploaded_then_forgotten(agent, watch_dir, tmp_path, s3_client, bucket)
    port = free_port()
    second: AgentProcess = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="1", PROM_PORT=str(port))
    wait_for(lambda: second.events_named("file.deleted"), deadline_s=30, what="the delete")
    assert not done.exists()
    assert sample_value(http_get(port, "/metrics")[1], "streamup_files_recognised_total") == 1
    assert paths_of(second, "stream.recognised") == [str(done)]
    assert not second.events_named("stream.discovered")
    assert len(object_keys(s3_client, bucket)) == 2
    assert second.stop() == 0


@pytest.mark.parametrize(
    ("template", "crash"),
    [(None, False), (NUMBERED, False), (None, True)],
    ids=["stream-id-keys", "numbered-keys", "killed-before-the-claim"],
)
def test_a_recording_whose_upload_the_lost_store_held_resumes_it_without_resending(
    template: str | None,
    crash: bool,
    agent: Any,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    """Killed mid-recording, STATE_DIR lost: the restart finds the upload in progress whose
    first part is the file's beginning, takes in the parts S3 holds and sends only the rest."""
    env = {"S3_KEY_TEMPLATE": template} if template else {}
    first: AgentProcess = agent(**env)
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    target = watch_dir / "live.mp4"
    writer = grow(target, 17 * MiB, 4 * MiB)  # parts of 5 MiB: four in all
    wait_for(lambda: len(first.events_named("part.uploaded")) >= 2, deadline_s=20,
             what="two parts")  # fmt: skip
    first.kill()
    [key] = {e["key"] for e in first.events_named("stream.discovered")}
    lose_the_store("sqlite", tmp_path / "state", None)

    if crash:  # found, not yet claimed: the next start finds it again
        killed: AgentProcess = agent(STREAMUP_CRASH_AT="before_lost_upload_claimed", **env)
        assert killed.wait() == 137
    second: AgentProcess = agent(**env)
    writer.join()
    doc = wait_metadata(s3_client, bucket, "live.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    [found] = second.events_named("stream.upload_found")
    assert found["key"] == key == doc["s3_key_prefix"]
    [reconciled] = second.events_named("stream.reconciled")
    assert reconciled["adopted"] >= 2
    sent_again = {e["part"] for e in second.events_named("part.uploaded")}
    assert not sent_again & set(range(1, reconciled["adopted"] + 1)), sent_again
    assert "Uploads" not in s3_client.list_multipart_uploads(Bucket=bucket)
    assert len(object_keys(s3_client, bucket)) == 2
    assert second.stop() == 0


def test_a_file_that_grew_after_its_object_was_made_is_extended_not_sent_again(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    """The store lost, and the recording went on meanwhile: the object it begins with is
    recognised as its completed prefix, and extended in place (the prefix copied in S3)."""
    done = uploaded_then_forgotten(agent, watch_dir, tmp_path, s3_client, bucket)
    with done.open("ab") as handle:
        handle.write(os.urandom(3 * MiB))
    os.utime(done, (HOUR_AGO + 60, HOUR_AGO + 60))
    second: AgentProcess = agent()
    wait_for(lambda: second.events_named("stream.completed"), deadline_s=30, what="the extension")
    [recognised] = second.events_named("stream.recognised")
    assert recognised["size_bytes"] == 6 * MiB
    [extending] = second.events_named("stream.extending")
    assert extending["from_size_bytes"] == 6 * MiB
    doc = wait_metadata(s3_client, bucket, "done.mp4", deadline_s=10)
    assert doc["s3_key_prefix"] == recognised["key"]  # the same key, replaced
    assert doc["bytes_copied"] >= 5 * MiB  # the prefix was not sent again
    assert_exact(s3_client, bucket, doc, done, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    assert second.stop() == 0
