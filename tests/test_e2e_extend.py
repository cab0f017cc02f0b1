"""A file that grows again after its stream completed (issue 18 C): real `streamup run`, moto over
HTTP behind a proxy that counts the bytes, SIGKILL at each new step of the extension."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.agent import (
    AgentProcess,
    MiB,
    assert_exact,
    metadata_docs,
    object_keys,
    wait_for,
    wait_metadata,
)
from tests.proxy import FaultProxy

# HTTP request and response headers, the metadata JSON twice, ListParts: what is not payload.
OVERHEAD_BYTES = 512 * 1024


def first_recording(
    watch_dir: Path, s3: Any, bucket: str, size: int
) -> tuple[Path, dict[str, Any]]:
    path = watch_dir / "cam.mp4"
    path.write_bytes(os.urandom(size))
    return path, wait_metadata(s3, bucket, "cam.mp4", deadline_s=30)


def append(path: Path, size: int) -> None:
    with path.open("ab") as handle:
        handle.write(os.urandom(size))


def extended_doc(s3: Any, bucket: str, size: int) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for doc in metadata_docs(s3, bucket).values():
            if doc["total_size_bytes"] == size and doc.get("extended_from"):
                return doc
        return None

    return wait_for(found, deadline_s=30, what="the extended object's metadata")


def wait_crash(process: AgentProcess, point: str) -> None:
    proc = process.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, deadline_s=30, what=f"the crash at {point}")
    assert proc.returncode == 137, process.log_text()[-2000:]


def open_uploads(s3: Any, bucket: str) -> list[Any]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_a_completed_file_that_grows_is_extended_in_place_sending_only_new_bytes(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    runner: AgentProcess = agent(S3_ENDPOINT_URL=proxy.url, STREAM_TIMEOUT_SECONDS="1")
    path, first = first_recording(watch_dir, s3_client, bucket, 12 * MiB)
    append(path, 6 * MiB)
    doc = extended_doc(s3_client, bucket, 18 * MiB)
    final_size = path.stat().st_size
    ratio = proxy.bytes_up / final_size
    print(f"sent {proxy.bytes_up} bytes for a final size of {final_size}: {ratio:.3f}x")
    assert ratio <= 1.1
    assert proxy.bytes_up <= final_size + OVERHEAD_BYTES
    # One object at the same key, replaced by its longer self, equal to the file.
    key = first["s3_key_prefix"]
    assert doc["s3_key_prefix"] == key
    assert object_keys(s3_client, bucket) == [key, key + ".metadata.json"]
    assert_exact(s3_client, bucket, doc, path, tmp_path)
    assert doc["extended_from"]["stream_id"] == first["stream_id"] != doc["stream_id"]
    assert doc["extended_from"]["size_bytes"] == 12 * MiB
    assert doc["extended_from"]["extensions"] == 1
    assert (doc["bytes_copied"], doc["bytes_sent"]) == (12 * MiB, 6 * MiB)
    assert first["extended_from"] is None and first["bytes_copied"] == 0
    assert open_uploads(s3_client, bucket) == []
    assert len(runner.events_named("stream.completed")) == 2

    # Then the writer goes back and changes a byte before it appends: a new stream at a new key,
    # and the object at the old key is not replaced.
    old = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with path.open("r+b") as handle:
        handle.seek(100)
        handle.write(bytes([old[100] ^ 0xFF]))
        handle.seek(0, os.SEEK_END)
        handle.write(os.urandom(MiB))

    def two_docs() -> dict[str, dict[str, Any]] | None:
        docs = metadata_docs(s3_client, bucket)
        return docs if len(docs) == 2 else None

    docs = wait_for(two_docs, deadline_s=30, what="a second object")
    new = docs[next(k for k in docs if k != key)]
    assert new["extended_from"] is None and new["bytes_copied"] == 0
    assert_exact(s3_client, bucket, new, path, tmp_path)
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == old
    refused = runner.events_named("stream.not_extended")
    assert refused and "prefix changed" in refused[0]["reason"]
    assert runner.stop() == 0


def test_a_kill_at_each_step_of_an_extension_ends_in_one_exact_extended_object(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # One extension, killed at each of its new steps in turn, each restart going one step further.
    runner: AgentProcess = agent(STREAM_TIMEOUT_SECONDS="1", STREAMUP_CRASH_AT="after_part_copy")
    path, first = first_recording(watch_dir, s3_client, bucket, 6 * MiB)
    key = first["s3_key_prefix"]
    old = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    append(path, 2 * MiB)
    for point, next_point in [
        ("after_part_copy", "before_replace"), ("before_replace", "after_replace"),
        ("after_replace", ""),
    ]:  # fmt: skip
        wait_crash(runner, point)
        # Killed: the key holds one object, the completed one until the replacement, then the
        # extended one; never none, never a second.
        assert object_keys(s3_client, bucket) == [key, key + ".metadata.json"]
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == (path.read_bytes() if point == "after_replace" else old), point
        runner = agent(STREAM_TIMEOUT_SECONDS="1", STREAMUP_CRASH_AT=next_point)
    doc = extended_doc(s3_client, bucket, 8 * MiB)
    assert doc["s3_key_prefix"] == key
    assert_exact(s3_client, bucket, doc, path, tmp_path)
    assert (doc["bytes_copied"], doc["bytes_sent"]) == (6 * MiB, 2 * MiB)
    assert object_keys(s3_client, bucket) == [key, key + ".metadata.json"]
    assert open_uploads(s3_client, bucket) == []
    assert runner.events_named("stream.found_completed")  # completed before the last kill
    assert runner.stop() == 0
