"""A faststart MP4 rebuilt from its stale upload by server-side copy (stream.rebuild), killed at
every step of the rebuild, and on a server that refuses UploadPartCopy. Real `streamup run`
processes on moto over HTTP, through the byte-counting proxy.

The file is what `-movflags +faststart` does to a recording, made by hand so that each run is
short: it grows as `ftyp`, `free`, `mdat`, media (parts 2 and 3 go up meanwhile, part 1 is held
back for the header patch), then `moov` is written in front and everything after `ftyp` moves.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.agent import MiB, assert_exact, object_keys, wait_for, wait_metadata
from tests.proxy import FaultProxy

PART = 5 * MiB
OVERHEAD_BYTES = 256 * 1024  # request headers, the metadata JSON: what is not part payload
POINTS = ["before_stale_complete", "after_stale_complete", "after_part_copy", "after_complete"]


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def record_faststart(path: Path, uploaded: Any, midway: Any = None) -> bytes:
    """Grow a plain MP4 until parts 2 and 3 are in S3 (`uploaded()` says so), then move a
    `moov` to its front as faststart does; the final bytes. `midway()`, if given, runs once
    part 2 is whole and part 3 is not, and returns the `uploaded` to wait on from there."""
    ftyp = box(b"ftyp", b"isom\0\0\2\0isomiso2avc1mp41")
    media = os.urandom(3 * PART + 2 * MiB)
    with path.open("wb") as handle:
        start = ftyp + box(b"free") + b"\0\0\0\x08mdat" + media
        if midway is not None:
            handle.write(start[: 2 * PART + MiB])
            handle.flush()
            uploaded = midway()
            start = start[2 * PART + MiB :]
        handle.write(start)
        handle.flush()
        wait_for(uploaded, deadline_s=30, what="parts 2 and 3 while the file grows")
        moov = box(b"moov", os.urandom(4000))
        final = ftyp + moov + box(b"free") + struct.pack(">I4s", 8 + len(media), b"mdat") + media
        handle.seek(0)
        handle.write(final)
    return final


def parts_sent(agent: Any, path: Path) -> set[int]:
    return {e["part"] for e in agent.events_named("part.uploaded") if e.get("path") == str(path)}


def no_uploads_left(s3: Any, bucket: str) -> None:
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# Ceph RGW as well, at the steps where the resumed agent asks the server what an uninterrupted
# rebuild never does (measured: RGW, like moto, completes an upload again and ignores If-Match
# on the completion; its ETags differ in form: copies' unquoted, content-MD5 mode): after a copy,
# the part copied again over its own copy; after the final completion, the object recognised
# by HeadObject (the replacing completion refused before it reaches the server), the completed
# upload aborted. The steps before them repeat the uninterrupted requests: moto only.
RGW_POINTS = ["after_part_copy", "after_complete"]


@pytest.mark.parametrize(
    ("s3_backend", "points"), [("moto", POINTS), ("rgw", RGW_POINTS)], ids=["moto", "rgw"]
)
def test_a_kill_at_each_rebuild_step_in_turn_ends_in_one_exact_object(
    points: list[str],
    agent: Any,
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    # One agent per crash point, each killed at its point, each resuming where the one before
    # died (a fresh file per point would cost two agent start-ups each): every step of the
    # rebuild is interrupted once, and its resumption is what meets the next point. Before
    # them (moto), a SIGKILL while the file grows with its part 1 held back: the next agent
    # reads part 1 from the file.
    target = watch_dir / "fast.mp4"
    via = {"S3_ENDPOINT_URL": proxy.url, "UPLOAD_CONCURRENCY": "1"}
    if points[0] == "before_stale_complete":
        crashed, final = killed_while_growing(agent, target, via)
    else:
        crashed = [agent(STREAMUP_CRASH_AT=points[0], **via)]
        final = record_faststart(target, lambda: {2, 3} <= parts_sent(crashed[0], target))
    for point in points[1:]:
        wait_crash(crashed[-1])
        crashed.append(agent(STREAMUP_CRASH_AT=point, **via))
    wait_crash(crashed[-1])
    assert [e["point"] for a in crashed for e in a.events_named("test.crash")] == points
    assert crashed[0].events_named("stream.rebuild_planned")
    last = agent(**via)
    doc = wait_metadata(s3_client, bucket, "fast.mp4", deadline_s=30)
    assert target.read_bytes() == final
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    # One object and its metadata: the temporary object was replaced, no upload is left over.
    assert len(object_keys(s3_client, bucket)) == 2
    no_uploads_left(s3_client, bucket)
    assert doc["bytes_copied"] == 2 * PART
    # What went up for the object: each byte about once (the crash after a copy costs nothing
    # but the copy request; the pieces sent before a crash are checkpointed).
    sent = proxy.bytes_up_by_path[f"/{bucket}/{doc['s3_key_prefix']}"]
    assert sent <= len(final) + OVERHEAD_BYTES
    assert last.stop() == 0


def killed_while_growing(agent: Any, target: Path, via: dict[str, str]) -> tuple[list[Any], bytes]:
    """Record, with a SIGKILL once part 2 is sent (part 1 held back); the next agent, armed at
    `before_stale_complete`, sees the rest. The agents that will crash, and the final bytes."""
    growing = agent(**via)
    crashed: list[Any] = []

    def kill_midway() -> Any:
        wait_for(lambda: 2 in parts_sent(growing, target), deadline_s=30, what="part 2")
        growing.kill()
        crashed.append(agent(STREAMUP_CRASH_AT="before_stale_complete", **via))
        return lambda: 3 in parts_sent(crashed[0], target)

    final = record_faststart(target, None, kill_midway)
    assert parts_sent(growing, target) == {2}  # part 1 held back
    wait_crash(crashed[0])
    assert 2 not in parts_sent(crashed[0], target)  # adopted, or known: never sent twice
    return crashed, final


def wait_crash(process: Any) -> None:
    wait_for(lambda: process.proc.poll() is not None, deadline_s=30, what="the crash")
    assert process.proc.returncode == 137, process.log_text()[-2000:]


def test_server_refusing_part_copies_gets_the_pieces_sent(
    agent: Any,
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    proxy.refuse_copies = True
    target = watch_dir / "fast.mp4"
    process = agent(S3_ENDPOINT_URL=proxy.url, UPLOAD_CONCURRENCY="1")
    record_faststart(target, lambda: {2, 3} <= parts_sent(process, target))
    doc = wait_metadata(s3_client, bucket, "fast.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert proxy.copies_refused == 1  # refused once; the agent does not ask again
    assert len(process.events_named("s3.copy_refused")) == 1
    assert doc["bytes_copied"] == 0
    assert len(object_keys(s3_client, bucket)) == 2
    no_uploads_left(s3_client, bucket)
    assert process.stop() == 0
