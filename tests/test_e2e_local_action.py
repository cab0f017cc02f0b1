"""The local-file action with real `streamup run` processes, real files and moto over HTTP:
a file is deleted or moved only once S3 provably holds it, never otherwise, and a crash between
the checkpointed intent and the unlink is finished exactly once at the next start. Each delete
and move is told once as a `file.deleted` / `file.moved` event, across a crash too."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from streamup.after.events import EventType, event_id
from tests.agent import (
    MiB,
    assert_exact,
    download,
    grow,
    metadata_docs,
    object_keys,
    sha256_file,
    wait_for,
    wait_metadata,
)
from tests.proxy import FaultProxy
from tests.receiver import Receiver, outbox_empty, status_json


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


def told(receiver: Receiver, event_type: str) -> list[Any]:
    return [r for r in receiver.accepted() if r.json()["type"] == event_type]


def kept(process: Any, reason: str) -> list[dict[str, Any]]:
    return [e for e in process.events_named("file.kept") if e.get("reason") == reason]


def wait_kept(process: Any, reason: str, local: Path) -> None:
    """Until the agent says it keeps `local` for `reason`; fails at once if it deleted it."""
    wait_for(lambda: kept(process, reason) or not local.exists(), deadline_s=20,
             what=f"the file kept ({reason})")  # fmt: skip
    assert local.exists(), f"deleted although it should have been kept ({reason})"


def started(process: Any) -> None:
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="start")


def finished_file(tmp_path: Path, name: str, size: int) -> Path:
    source = tmp_path / f"source-{name}"
    source.write_bytes(os.urandom(size))
    return source


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """A real, small filesystem of its own (another device), or a skip where mounts are refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"this sandbox refuses a tmpfs mount: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --------------------------------------------------------------------------- delete


def test_delete_waits_for_the_object_the_metadata_and_keep_local_seconds(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "a.mp4", 12 * MiB + 77)
    process = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="5")
    started(process)
    local = watch_dir / "a.mp4"
    shutil.copy(source, local)
    doc = wait_metadata(s3_client, bucket, "a.mp4")
    assert local.exists(), "deleted before the metadata existed"
    seen = wait_for(lambda: None if local.exists() else time.time(), deadline_s=30,
                    what="the file to be deleted", every_s=0.05)  # fmt: skip
    completed_at = datetime.fromisoformat(doc["stream_completed_at_utc"]).timestamp()
    assert seen - completed_at >= 5.0, "deleted before KEEP_LOCAL_SECONDS had passed"
    assert_exact(s3_client, bucket, doc, source, tmp_path)  # S3 holds exactly what was deleted
    (deleted,) = wait_for(lambda: process.events_named("file.deleted"), deadline_s=10, what="log")
    assert deleted["trigger"] == "after_upload" and deleted["size_bytes"] == 12 * MiB + 77
    assert process.stop() == 0


# --------------------------------------------------------------------------- move


def test_move_on_the_same_filesystem_keeps_the_relative_path_and_the_inode(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str, receiver: Receiver
) -> None:
    target_dir = tmp_path / "done"
    source = finished_file(tmp_path, "b.mp4", 11 * MiB + 5)
    process = agent(AFTER_UPLOAD="move", AFTER_UPLOAD_DIR=str(target_dir), WEBHOOK_URL=receiver.url)
    started(process)
    (watch_dir / "cam1").mkdir()
    local = watch_dir / "cam1" / "b.mp4"
    shutil.copy(source, local)
    inode = local.stat().st_ino
    doc = wait_metadata(s3_client, bucket, "b.mp4")
    moved = target_dir / "cam1" / "b.mp4"
    wait_for(lambda: moved.exists() and not local.exists(), deadline_s=30, what="the move")
    assert moved.stat().st_ino == inode  # a rename-like move, no copy
    copy = download(s3_client, bucket, doc["s3_key_prefix"], tmp_path / "object")
    assert sha256_file(moved) == sha256_file(copy) == sha256_file(source) == doc["sha256"]
    (line,) = wait_for(lambda: process.events_named("file.moved"), deadline_s=10, what="log")
    assert line["target"] == str(moved)
    # The webhook hears of the completion, then of the move, each once.
    (delivery,) = wait_for(lambda: told(receiver, "file.moved"), deadline_s=20, what="event")
    assert [r.json()["type"] for r in receiver.accepted()] == ["stream.completed", "file.moved"]
    event = delivery.json()
    assert event["id"] == delivery.event_id == event_id(EventType.FILE_MOVED, doc["stream_id"])
    assert (event["path"], event["moved_to"]) == (str(local), str(moved))
    assert (event["key"], event["metadata_key"]) == (
        doc["s3_key_prefix"], doc["s3_key_prefix"] + ".metadata.json",
    )  # fmt: skip
    assert (event["size_bytes"], event["sha256"]) == (11 * MiB + 5, doc["sha256"])
    assert line["event_id"] == event["id"]
    time.sleep(2)  # the moved file is outside WATCH_DIR: nothing is uploaded again
    assert len(object_keys(s3_client, bucket)) == 2
    assert len(receiver.accepted()) == 2
    assert process.stop() == 0


def test_move_to_another_filesystem_copies_compares_then_unlinks(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    with tmpfs(tmp_path / "other-fs", 64) as target_dir:
        assert os.stat(target_dir).st_dev != os.stat(watch_dir).st_dev
        source = finished_file(tmp_path, "c.mp4", 17 * MiB + 3)
        process = agent(AFTER_UPLOAD="move", AFTER_UPLOAD_DIR=str(target_dir))
        started(process)
        local = watch_dir / "c.mp4"
        shutil.copy(source, local)
        mtime_ns = local.stat().st_mtime_ns
        doc = wait_metadata(s3_client, bucket, "c.mp4")
        moved = target_dir / "c.mp4"
        wait_for(lambda: moved.exists() and not local.exists(), deadline_s=30, what="the move")
        copy = download(s3_client, bucket, doc["s3_key_prefix"], tmp_path / "object")
        assert sha256_file(moved) == sha256_file(copy) == doc["sha256"]
        assert moved.stat().st_mtime_ns == mtime_ns
        assert sorted(os.listdir(target_dir)) == ["c.mp4"]  # no partial copy left behind
        assert process.stop() == 0


# --------------------------------------------------------------------------- kept


def test_a_file_held_open_for_writing_stays_until_its_writer_closes_it(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "w.mp4", 6 * MiB)
    process = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3")
    started(process)
    local = watch_dir / "w.mp4"
    shutil.copy(source, local)
    wait_metadata(s3_client, bucket, "w.mp4")
    with local.open("r+b"):  # a process (this one) holds it open for writing, writing nothing
        wait_kept(process, "open_for_writing", local)
        time.sleep(2)
        assert local.exists()
    wait_for(lambda: not local.exists(), deadline_s=30, what="the delete once it is closed")
    assert len(kept(process, "open_for_writing")) == 1  # logged once, however often looked at
    assert process.stop() == 0


def test_a_file_changed_after_verification_with_its_mtime_put_back_stays(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "x.mp4", 6 * MiB)
    process = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3")
    started(process)
    local = watch_dir / "x.mp4"
    shutil.copy(source, local)
    wait_metadata(s3_client, bucket, "x.mp4")
    before = local.stat()
    with local.open("r+b") as handle:  # same size, same mtime: only the ctime tells
        handle.seek(1000)
        handle.write(b"changed")
        handle.flush()
        # Put back before the close: the close (inotify) makes the agent look at once.
        os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))
    wait_kept(process, "file_changed", local)
    time.sleep(3)
    assert local.exists() and sha256_file(local) != sha256_file(source)
    assert not process.events_named("file.deleted")
    assert process.stop() == 0


def test_a_file_whose_object_was_deleted_behind_the_agents_back_stays(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "gone.mp4", 6 * MiB)
    process = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3")
    started(process)
    local = watch_dir / "gone.mp4"
    shutil.copy(source, local)
    doc = wait_metadata(s3_client, bucket, "gone.mp4")
    s3_client.delete_object(Bucket=bucket, Key=doc["s3_key_prefix"])
    wait_kept(process, "object_missing", local)
    time.sleep(2)
    assert local.exists() and sha256_file(local) == sha256_file(source)
    assert process.stop() == 0


def test_with_s3_unreachable_nothing_is_deleted_until_it_answers_again(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "cut.mp4", 6 * MiB)
    process = agent(S3_ENDPOINT_URL=proxy.url, AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3")
    started(process)
    local = watch_dir / "cut.mp4"
    shutil.copy(source, local)
    wait_metadata(s3_client, bucket, "cut.mp4")
    proxy.cut()
    wait_kept(process, "s3_unreachable", local)
    time.sleep(2)
    assert local.exists()
    proxy.restore()
    wait_for(lambda: not local.exists(), deadline_s=30, what="the delete once S3 answers")
    assert process.stop() == 0


# --------------------------------------------------------------------------- crashes


def _completed_rows(state_dir: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(state_dir / "streamup.db")) as db:
        return dict(db.execute("SELECT path, local_action FROM completed_files").fetchall())


def test_sigkill_between_the_intent_and_the_unlink_deletes_exactly_once_after_restart(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(tmp_path, "k.mp4", 9 * MiB + 1)
    notes = watch_dir / "notes.txt"
    notes.write_text("not a recording\n")
    first = agent(AFTER_UPLOAD="delete", STREAMUP_CRASH_AT="before_local_delete")
    started(first)
    local = watch_dir / "k.mp4"
    shutil.copy(source, local)
    doc = wait_metadata(s3_client, bucket, "k.mp4")
    assert first.proc is not None
    first.proc.wait(30)
    assert [e["point"] for e in first.events_named("test.crash")] == ["before_local_delete"]
    assert local.exists(), "the crash point lies before the unlink"
    assert _completed_rows(tmp_path / "state") == {str(local): "delete"}  # the intent is durable
    second = agent(AFTER_UPLOAD="delete")
    wait_for(lambda: not local.exists(), deadline_s=30, what="the delete after the restart")
    (resumed,) = second.events_named("file.action_resumed")
    assert resumed["outcome"] == "redo"
    wait_for(lambda: second.events_named("file.deleted"), deadline_s=10, what="the log line")
    assert len(second.events_named("file.deleted")) == 1
    assert not first.events_named("file.deleted")
    assert notes.read_text() == "not a recording\n"
    assert sorted(os.listdir(watch_dir)) == ["notes.txt"]
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    wait_for(lambda: _completed_rows(tmp_path / "state") == {}, deadline_s=10, what="forgotten")
    assert second.stop() == 0


def test_sigkill_after_a_cross_filesystem_copy_finishes_the_move_after_restart(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    with tmpfs(tmp_path / "other-fs", 64) as target_dir:
        source = finished_file(tmp_path, "m.mp4", 8 * MiB + 9)
        env = {"AFTER_UPLOAD": "move", "AFTER_UPLOAD_DIR": str(target_dir)}
        first = agent(**env, STREAMUP_CRASH_AT="after_local_copy")
        started(first)
        local = watch_dir / "m.mp4"
        shutil.copy(source, local)
        doc = wait_metadata(s3_client, bucket, "m.mp4")
        assert first.proc is not None
        first.proc.wait(30)
        moved = target_dir / "m.mp4"
        assert local.exists() and moved.exists()  # the copy landed, the source is still there
        second = agent(**env)
        wait_for(lambda: not local.exists(), deadline_s=30, what="the move to be finished")
        (resumed,) = second.events_named("file.action_resumed")
        assert resumed["outcome"] == "unlink_source"
        copy = download(s3_client, bucket, doc["s3_key_prefix"], tmp_path / "object")
        assert sha256_file(moved) == sha256_file(copy) == sha256_file(source)
        assert sorted(os.listdir(target_dir)) == ["m.mp4"]
        assert second.stop() == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_after_the_unlink_tells_the_delete_once_and_spares_the_new_file_at_its_path(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path, s3_client: Any,
    bucket: str, receiver: Receiver, backend: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    if backend == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")  # the agents and `status`
    source = finished_file(tmp_path, "z.mp4", 7 * MiB + 3)
    # The next recording at the same path, made now so it cannot reuse the deleted file's inode.
    fresh = finished_file(tmp_path, "z-next.mp4", 2 * MiB + 1)
    first = agent(AFTER_UPLOAD="delete", WEBHOOK_URL=receiver.url,
                  STREAMUP_CRASH_AT="after_local_unlink")  # fmt: skip
    started(first)
    local = watch_dir / "z.mp4"
    shutil.copy(source, local)
    doc = wait_metadata(s3_client, bucket, "z.mp4")
    assert first.proc is not None and first.proc.wait(30) == 137
    assert [e["point"] for e in first.events_named("test.crash")] == ["after_local_unlink"]
    assert not local.exists(), "the crash point lies after the unlink"
    assert not first.events_named("file.deleted")  # the record and event were not written yet
    offline = status_json(env)
    assert "file.deleted" not in [row["type"] for row in offline["events"]["events"]]
    os.replace(fresh, local)  # a recorder starts the next file under the same name
    second = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3600", WEBHOOK_URL=receiver.url)
    (resumed,) = wait_for(lambda: second.events_named("file.action_resumed"), deadline_s=30,
                          what="the intent resumed")  # fmt: skip
    assert resumed["outcome"] == "done"
    wait_for(lambda: told(receiver, "file.deleted"), deadline_s=30, what="the file.deleted event")
    wait_for(lambda: len([d for d in metadata_docs(s3_client, bucket).values()
                          if d["original_file_path"] == str(local)]) == 2,
             deadline_s=60, what="the new file uploaded")  # fmt: skip
    wait_for(lambda: outbox_empty(env), deadline_s=30, what="the outbox to empty")
    (delivery,) = told(receiver, "file.deleted")  # once, and nothing more can come
    event = delivery.json()
    assert event["id"] == delivery.event_id == event_id(EventType.FILE_DELETED, doc["stream_id"])
    assert (event["stream_id"], event["path"], event["sha256"]) == (
        doc["stream_id"], str(local), doc["sha256"],
    )  # fmt: skip
    assert event["size_bytes"] == 7 * MiB + 3 and "moved_to" not in event
    (line,) = second.events_named("file.deleted")
    assert line["stream_id"] == doc["stream_id"] and line["event_id"] == event["id"]
    # The new file at the path is not the one the intent named: untouched (KEEP_LOCAL_SECONDS).
    assert local.exists() and sha256_file(local) != doc["sha256"]
    new = [
        d for d in metadata_docs(s3_client, bucket).values() if d["stream_id"] != doc["stream_id"]
    ]
    assert [d["sha256"] for d in new] == [sha256_file(local)]
    completed = told(receiver, "stream.completed")
    assert {r.json()["stream_id"] for r in completed} == {doc["stream_id"], new[0]["stream_id"]}
    assert second.stop() == 0
    assert_exact(s3_client, bucket, doc, source, tmp_path)  # S3 holds exactly what was deleted
    # A third start finds nothing left to resume or to tell again.
    third = agent(AFTER_UPLOAD="delete", KEEP_LOCAL_SECONDS="3600", WEBHOOK_URL=receiver.url)
    started(third)
    time.sleep(2)
    assert not third.events_named("file.action_resumed")
    assert len(told(receiver, "file.deleted")) == 1 and local.exists()
    assert third.stop() == 0


# --------------------------------------------------------------------------- free space


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_below_min_free_bytes_uploaded_files_go_oldest_first_and_growing_ones_stay(
    agent: Any, env: dict[str, str], tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    from tests.servers import free_port

    with tmpfs(tmp_path / "small-fs", 64) as watch:
        older, newer = watch / "older.mp4", watch / "newer.mp4"
        for path, age_s in ((older, 3600), (newer, 1800)):
            source = finished_file(tmp_path, path.name, 12 * MiB)
            os.utime(source, (time.time() - age_s, time.time() - age_s))
            shutil.copy2(source, path)
        # First run: both uploaded under keep, no guard. They stay.
        first = agent(WATCH_DIR=str(watch))
        for name in ("older.mp4", "newer.mp4"):
            wait_metadata(s3_client, bucket, name)
        assert first.stop() == 0
        assert older.exists() and newer.exists()
        # Second run, still keep, with the guard: 40 MiB free < 46 MiB. Deleting the older file
        # is enough; the newer one stays.
        port = free_port()
        second = agent(WATCH_DIR=str(watch), MIN_FREE_BYTES=str(46 * MiB), PROM_PORT=str(port))
        wait_for(lambda: not older.exists(), deadline_s=30, what="the oldest file deleted")
        time.sleep(2)
        assert newer.exists()
        # A recording grows until the disk is short with nothing deletable but itself.
        live = watch / "live.mp4"
        writer = grow(live, 20 * MiB, 2 * MiB)
        try:
            wait_for(lambda: not newer.exists(), deadline_s=30, what="the newer file deleted")
            warning = wait_for(lambda: second.events_named("disk.short"), deadline_s=30,
                               what="the disk-short warning")  # fmt: skip
            assert live.exists()
            code, body = _get(port, "/healthz")
            assert code == 200 and body.startswith("degraded: disk short"), body
            status = __import__("json").loads(_get(port, "/status")[1])
            assert status["free_disk_bytes"] < 46 * MiB and status["disk"]["short"]
            assert "streamup_disk_short 1.0" in _get(port, "/metrics")[1]
        finally:
            writer.join()
        assert warning[0]["min_free_bytes"] == 46 * MiB
        wait_for(lambda: len(second.events_named("file.deleted")) >= 2, deadline_s=10, what="log")
        deleted = [e["path"] for e in second.events_named("file.deleted")]
        assert deleted[:2] == [str(older), str(newer)]
        assert all(e["trigger"] == "min_free" for e in second.events_named("file.deleted"))
        # Once the recording is complete and in S3, it goes too, and the disk recovers.
        wait_for(lambda: not live.exists(), deadline_s=40, what="the finished recording deleted")
        wait_for(lambda: second.events_named("disk.recovered"), deadline_s=10, what="recovery")
        assert _get(port, "/healthz") == (200, "ok\n")
        assert len(second.events_named("disk.short")) == 1
        for name in ("older.mp4", "newer.mp4", "live.mp4"):
            assert wait_metadata(s3_client, bucket, name)["total_size_bytes"] > 0
        assert second.stop() == 0
