"""End to end: real `streamup run` processes, moto's S3 server, files written in real time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.agent import (
    MiB,
    assert_exact,
    doc_for,
    metadata_docs,
    object_keys,
    wait_for,
    write_slowly,
)
from tests.conftest import BOTH_SERVERS


@BOTH_SERVERS
def test_finished_file_copied_in_arrives_as_one_exact_object(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = tmp_path / "finished.mp4"
    source.write_bytes(os.urandom(23 * MiB + 12345))
    process = agent()
    wait_for(
        lambda: object_keys(s3_client, bucket) is not None and _bucket_exists(s3_client, bucket),
        deadline_s=20,
        what="the agent to create its bucket",
    )
    shutil.copy(source, watch_dir / "finished.mp4")
    docs = wait_for(lambda: metadata_docs(s3_client, bucket), deadline_s=30, what="the metadata")
    doc = doc_for(docs, "finished.mp4")
    assert doc is not None
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    assert [c["part_number"] for c in doc["chunks"]] == [1, 2, 3, 4, 5]
    assert all(c["size_bytes"] >= 5 * MiB for c in doc["chunks"][:-1])
    assert len(object_keys(s3_client, bucket)) == 2
    assert process.stop() == 0


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        return False
    return True


def _parts_in_flight(s3: Any, bucket: str) -> int:
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sum(
        len(s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
        for u in uploads
    )


def test_growing_file_gets_parts_uploaded_while_it_is_written(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    process = agent()
    # Started: the start-up probes' throwaway uploads are aborted by then.
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="the start")
    target = watch_dir / "live.mp4"
    writer = threading.Thread(
        target=write_slowly, args=(target,), kwargs={"total_bytes": 40 * MiB, "rate_bytes_s": MiB}
    )
    writer.start()
    try:
        parts_during = wait_for(
            lambda: _parts_in_flight(s3_client, bucket) >= 3,
            deadline_s=40,
            what="parts in S3 while the file grows",
            every_s=0.5,
        )
        assert writer.is_alive(), "the writer finished before parts were seen"
        assert parts_during
    finally:
        writer.join()
    docs = wait_for(lambda: metadata_docs(s3_client, bucket), deadline_s=30, what="the metadata")
    doc = doc_for(docs, "live.mp4")
    assert doc is not None
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert all(c["size_bytes"] >= 5 * MiB for c in doc["chunks"][:-1])
    assert doc["parts_reuploaded"] == 0


def test_files_present_before_start_are_uploaded_and_ignored_files_are_not(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    (watch_dir / "sub" / "deeper").mkdir(parents=True)
    (watch_dir / ".hidden").mkdir()
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(os.urandom(1000))
    wanted = {"a.mp4": 6 * MiB, "sub/deeper/B.MP4": 1000}
    ignored = {
        ".secret.mp4": 10,
        ".hidden/c.mp4": 10,
        "d.mp4.part": 10,
        "e.mp4.tmp": 10,
        "notes.txt": 10,
        "clip.mkv": 10,
        "f.mp4~": 10,
    }
    for name, size in {**wanted, **ignored}.items():
        (watch_dir / name).write_bytes(os.urandom(size))
    (watch_dir / "escape.mp4").symlink_to(outside)
    os.symlink(tmp_path, watch_dir / "linked-dir")
    process = agent()
    docs = wait_for(
        lambda: (d := metadata_docs(s3_client, bucket)) and len(d) >= 2 and d,
        deadline_s=30,
        what="two metadata documents",
    )
    # A marker written later proves that scans ran after the ignored files were there.
    (watch_dir / "marker.mp4").write_bytes(b"m")
    wait_for(
        lambda: doc_for(metadata_docs(s3_client, bucket), "marker.mp4"),
        deadline_s=30,
        what="the marker's metadata",
    )
    names = sorted(key.split("/", 2)[2] for key in metadata_docs(s3_client, bucket))
    assert names == ["a.mp4", "marker.mp4", "sub/deeper/B.MP4"]
    for name in wanted:
        doc = doc_for(docs, name)
        assert doc is not None
        assert_exact(s3_client, bucket, doc, watch_dir / name, tmp_path)
    assert process.stop() == 0
    assert len(object_keys(s3_client, bucket)) == 6


def test_completed_file_is_not_uploaded_again_after_restart(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    (watch_dir / "once.mp4").write_bytes(os.urandom(2 * MiB))
    first = agent()
    wait_for(lambda: metadata_docs(s3_client, bucket), deadline_s=30, what="the metadata")
    assert first.stop() == 0
    second = agent()
    wait_for(lambda: '"agent.started"' in second.log_text(), deadline_s=20, what="the restart")
    (watch_dir / "marker.mp4").write_bytes(b"x" * 100)
    wait_for(
        lambda: len(metadata_docs(s3_client, bucket)) == 2,
        deadline_s=30,
        what="the marker file's metadata",
    )
    assert second.stop() == 0
    assert len(object_keys(s3_client, bucket)) == 4
    discovered = [e["path"] for e in second.events() if e.get("event") == "stream.discovered"]
    assert discovered == [str(watch_dir / "marker.mp4")]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamup", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("CHUNK_SIZE_BYTES", "1000", "CHUNK_SIZE_BYTES"),
        ("CHUNK_SIZE_BYTES", "lots", "CHUNK_SIZE_BYTES"),
        ("STREAM_TIMEOUT_SECONDS", "-1", "STREAM_TIMEOUT_SECONDS"),
        ("WATCH_DIR", "/proc/streamup-cannot-exist", "WATCH_DIR"),
        ("S3_ENDPOINT_URL", "http://127.0.0.1:9", "S3_ENDPOINT_URL"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("S3_BUCKET_NAME", "Not_A_Valid_Bucket", "S3_BUCKET_NAME"),
    ],
)
def test_bad_setting_exits_nonzero_with_one_line_naming_it(
    env: dict[str, str], setting: str, value: str, named: str
) -> None:
    # An endpoint that refuses is waited for up to STARTUP_TIMEOUT_SECONDS, then named.
    result = run_cli(dict(env, STARTUP_TIMEOUT_SECONDS="3", **{setting: value}), "run")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("streamup: error:")]
    assert len(errors) == 1, result.stderr
    assert named in errors[0]
    assert "testing" not in result.stderr  # the secret key never shows


def test_access_denied_at_start_is_one_line_with_the_fix(env: dict[str, str]) -> None:
    # moto enforcing IAM auth from the first request: every request with these keys is refused.
    with servers.moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        result = run_cli(dict(env, S3_ENDPOINT_URL=endpoint), "run")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamup: error:")]
    assert len(errors) == 1, result.stderr
    assert "S3_BUCKET_NAME" in errors[0] and "access denied" in errors[0]
