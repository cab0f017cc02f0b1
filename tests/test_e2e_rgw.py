"""What a second real S3 server showed: answers for a lost upload, completion over an object that
is there already, and a step that keeps failing. Run against moto and Ceph RGW where the
behaviour is every server's; against RGW alone where only RGW can cause it (bucket policies)."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.agent import (
    MiB,
    assert_exact,
    kill_after_first_part,
    metadata_docs,
    wait_for,
    wait_metadata,
    write_slowly,
)
from tests.conftest import BOTH_SERVERS
from tests.proxy import FaultProxy
from tests.test_e2e_core import run_cli
from tests.test_e2e_recovery import finished_file, wait_exit

PART = 5 * MiB
RGW_ONLY = pytest.mark.parametrize("s3_backend", ["rgw"])
# CompleteMultipartUpload: POST on the object with the upload id (CreateMultipartUpload has
# `?uploads`, parts are PUTs).
COMPLETE_REQUEST = re.compile(rb"^POST /\S+\?uploadId=\S+ HTTP/1\.1\r$", re.MULTILINE)


def abort_every_upload(s3: Any, bucket: str) -> int:
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(uploads)


def status_rows(env: dict[str, str]) -> list[dict[str, Any]]:
    result = run_cli(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)["streams"]
    return rows


@BOTH_SERVERS
def test_upload_aborted_just_before_completion_starts_afresh(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # RGW answers this completion with 500 InternalError, which reads as "busy, try again":
    # only ListParts tells that the upload is gone. Without that check: retried forever.
    aborted: list[int] = []
    lock = threading.Lock()

    def abort_at_first_completion(block: bytes) -> None:
        with lock:
            if not aborted and COMPLETE_REQUEST.search(block):
                aborted.append(abort_every_upload(s3_client, bucket))

    proxy.before_forward = abort_at_first_completion
    source = finished_file(watch_dir, tmp_path, "vanishing.mp4", 2 * PART + 99)
    process = agent(S3_ENDPOINT_URL=proxy.url)
    doc = wait_metadata(s3_client, bucket, "vanishing.mp4", deadline_s=40)
    assert aborted == [1]
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    assert len(process.events_named("stream.upload_restarted")) == 1
    assert process.stop() == 0


@BOTH_SERVERS
def test_completion_never_replaces_an_object_already_at_the_stream_key(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # The agent dies after verifying, before completing; meanwhile another upload of the same
    # key is completed (as by a previous owner of the stream) with other bytes. The restarted
    # agent must not replace that object, and must say so. RGW ignores If-None-Match on
    # completion: there, only the client's HeadObject stands in the way.
    finished_file(watch_dir, tmp_path, "contested.mp4", 2 * PART + 99)
    wait_exit(agent(STREAMUP_CRASH_AT="before_complete"), 137)
    [upload] = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    key, other = upload["Key"], os.urandom(1000)
    rival = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3_client.upload_part(Bucket=bucket, Key=key, UploadId=rival, PartNumber=1, Body=other)[
        "ETag"
    ]
    s3_client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=rival,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )  # fmt: skip
    there = s3_client.head_object(Bucket=bucket, Key=key)["ETag"]
    second = agent()
    wait_for(lambda: second.events_named("stream.failed_step"), deadline_s=30, what="a refusal")
    [row] = status_rows(env)
    assert row["state"] == "failed_s3_complete"
    assert "PreconditionFailed" in row["error"]
    assert s3_client.head_object(Bucket=bucket, Key=key)["ETag"] == there
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == other
    assert metadata_docs(s3_client, bucket) == {}
    assert second.stop() == 0
    assert len(second.events_named("stream.failed_step")) == 1


def deny(bucket: str, action: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": [action],
                       "Resource": [f"arn:aws:s3:::{bucket}/*"]}],
    })  # fmt: skip


def seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@RGW_ONLY
def test_a_step_that_keeps_failing_is_reported_once_and_paced_by_a_growing_backoff(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # At resume ListParts is refused (a bucket policy) while the recorder keeps writing. Every
    # write is a file event; those used to end the announced 60 s pause at once, with a
    # traceback each time (64 lines in two minutes).
    target = watch_dir / "denied.mp4"
    handle = target.open("wb")
    kill_after_first_part(agent(), handle)
    s3_client.put_bucket_policy(Bucket=bucket, Policy=deny(bucket, "s3:ListMultipartUploadParts"))
    second = agent()
    write_slowly(handle, total_bytes=2 * MiB, rate_bytes_s=MiB // 4)  # 8 s of small writes
    failed = second.events_named("stream.failed_step")
    again = second.events_named("stream.failed_again")
    rows = status_rows(env)
    s3_client.delete_bucket_policy(Bucket=bucket)
    write_slowly(handle, total_bytes=PART, rate_bytes_s=4 * MiB)
    handle.close()
    doc = wait_metadata(s3_client, bucket, "denied.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)

    assert len(failed) == 1, failed
    assert failed[0]["level"] == "error" and "exception" not in failed[0]
    assert "AccessDenied" in failed[0]["error"] and "bucket policy" in failed[0]["error"]
    # Pauses of 1-2, 2-4, 4-8 s: at most three more attempts in those 8 s (it was 15 or so).
    assert len(again) <= 3, again
    attempts = [failed[0], *again]
    pauses = [a["retry_in_s"] for a in attempts]
    assert pauses == sorted(pauses) and 1.0 <= pauses[0] <= 2.0, pauses
    starts = [seconds(a) for a in attempts]
    assert all(b - a >= p - 0.1 for a, b, p in zip(starts, starts[1:], pauses, strict=False)), (
        starts,
        pauses,
    )
    traces = second.events_named("stream.failure_traceback")
    assert traces and all(
        t["level"] == "debug" and "AccessDenied" in t["exception"] for t in traces
    )
    [row] = rows
    assert row["path"] == str(target) and row["state"] == "active"
    assert "AccessDenied" in row["error"]
    assert second.events_named("stream.recovered")
    assert second.stop() == 0


@BOTH_SERVERS
def test_file_and_upload_both_lost_while_the_agent_was_down_end_the_stream(
    agent: Any, env: dict[str, str], watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    # Nothing is left to keep, anywhere: the stream ends (aborted_no_parts), not left active.
    target = watch_dir / "nowhere.mp4"
    with target.open("wb") as handle:
        kill_after_first_part(agent(), handle)
    target.unlink()
    assert abort_every_upload(s3_client, bucket) == 1
    second = agent()
    wait_for(lambda: second.events_named("stream.upload_restarted"), deadline_s=20, what="restart")
    document = wait_for(
        lambda: (d := json.loads(run_cli(env, "status", "--json").stdout))["streams"] == [] and d,
        deadline_s=20, what="the stream to end",
    )  # fmt: skip
    [ended] = document["recent_completions"]
    assert (ended["state"], ended["end_reason"]) == ("aborted_no_parts", "file_lost")
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert second.stop() == 0
