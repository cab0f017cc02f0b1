"""Every byte proven against what the server stored, with real `streamup run` processes.

moto verifies neither Content-MD5 nor checksums, so what it proves there is the agent's own
check: the part ETag (moto's is the MD5 of what it received) compared with the MD5 of what was
sent. Ceph RGW verifies Content-MD5 and refuses the damaged part itself. The object is
downloaded and compared with the file in every test: the outcome is asserted itself, not left
to the server to refuse.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import crc32c
import pytest

from streamup.checkpoint.sqlite import SqliteStore
from streamup.checksums import md5_of
from streamup.models import FileIdentity, PartRecord, Status, StreamRecord, utc_now
from tests.agent import (
    assert_exact,
    download,
    sha256_file,
    wait_for,
    wait_metadata,
)
from tests.proxy import FaultProxy

MiB = 1024 * 1024


def independent_composite_crc32c(data: bytes, sizes: list[int]) -> str:
    """The COMPOSITE CRC32C S3 reports, computed from the downloaded object and part sizes."""
    digests, offset = b"", 0
    for size in sizes:
        digests += crc32c.crc32c(data[offset : offset + size]).to_bytes(4, "big")
        offset += size
    whole = base64.b64encode(crc32c.crc32c(digests).to_bytes(4, "big")).decode()
    return f"{whole}-{len(sizes)}"


def assert_proven(
    s3: Any,
    bucket: str,
    doc: dict[str, Any],
    local: Path,
    tmp: Path,
    *,
    proof: str = "checksum_compared",
) -> None:
    """The object equals the file, and the metadata's checksum is the object's own."""
    assert_exact(s3, bucket, doc, local, tmp)
    data = download(s3, bucket, doc["s3_key_prefix"], tmp / "again").read_bytes()
    sizes = [chunk["size_bytes"] for chunk in doc["chunks"]]
    assert doc["checksum"] == {
        "algorithm": "CRC32C",
        "type": "COMPOSITE",
        "value": independent_composite_crc32c(data, sizes),
    }
    # moto reports the CRC32C of each part it received (S3_INTEGRITY_MODE=auto finds `reported`).
    assert doc["integrity_proof"] == proof


# What each server proves, and how the damaged part is caught there; on moto also the ETag proof
# it offered before its reported checksums were used (kept for servers whose ETags are MD5s and
# that report nothing: the MD5 of every part, compared with its ETag), forced.
PROOF_ON = {
    ("moto", "auto"): ("reported", "checksum mismatch", "checksum_compared"),
    ("moto", "etag"): ("etag", "ETag mismatch", "etag_compared"),
    ("rgw", "auto"): ("content_md5", "refused by the server", "server_verified"),
}


@pytest.mark.parametrize(
    ("s3_backend", "configured"), list(PROOF_ON), ids=["moto", "moto-etag", "rgw"]
)
def test_a_byte_flipped_on_the_wire_is_caught_and_the_part_sent_again(
    agent: Any,
    proxy: FaultProxy,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
    s3_backend: str,
    configured: str,
) -> None:
    mode, reason, proof = PROOF_ON[s3_backend, configured]
    source = tmp_path / "flipped.mp4"
    source.write_bytes(os.urandom(40 * MiB))
    process = agent(S3_ENDPOINT_URL=proxy.url, S3_INTEGRITY_MODE=configured)
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="start")
    (integrity,) = process.events_named("s3.integrity")
    assert integrity["mode"] == mode and not integrity["checksum_verified"]
    proxy.flip_byte_of_part(3)
    shutil.copy(source, watch_dir / "flipped.mp4")
    doc = wait_metadata(s3_client, bucket, "flipped.mp4", deadline_s=90)
    assert proxy.flipped == [3]  # the damage did happen on the wire
    (failed,) = process.events_named("part.proof_failed")
    assert failed["part"] == 3 and failed["reason"] == reason
    assert_proven(s3_client, bucket, doc, source, tmp_path, proof=proof)
    assert doc["sha256"] == sha256_file(source)
    assert process.stop() == 0


def test_a_finished_file_is_read_once_and_every_part_proven(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # Present before the agent starts: every part is read after the file's last change, so the
    # end-of-stream check re-reads none of them (only the short tail is read there).
    local = watch_dir / "finished.mp4"
    local.write_bytes(os.urandom(30 * MiB + 777))  # 6 whole 5 MiB parts and a tail
    process = agent()
    doc = wait_metadata(s3_client, bucket, "finished.mp4", deadline_s=60)
    (checked,) = process.events_named("stream.checked")
    assert checked["skipped_bytes"] == 30 * MiB and checked["reread_bytes"] == 777
    assert_proven(s3_client, bucket, doc, local, tmp_path)
    assert process.stop() == 0


def test_bytes_rewritten_with_the_old_mtime_put_back_are_still_caught(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # A tool that rewrites bytes in place and restores the mtime (rsync --inplace, cp -p) must
    # not fool the check: it trusts the ctime, which no writer can set back.
    local = watch_dir / "patched.mp4"
    local.write_bytes(os.urandom(20 * MiB))
    process = agent(STREAM_TIMEOUT_SECONDS="4")
    wait_for(lambda: len(process.events_named("part.uploaded")) == 4, deadline_s=30, what="4 parts")
    assert not process.events_named("stream.verified")  # the stream is still open
    before = local.stat()
    with local.open("r+b") as handle:
        handle.seek(7 * MiB)
        handle.write(b"patched!")
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))
    doc = wait_metadata(s3_client, bucket, "patched.mp4", deadline_s=60)
    assert doc["parts_reuploaded"] == 1
    assert_proven(s3_client, bucket, doc, local, tmp_path)
    assert process.stop() == 0


def test_a_stream_checkpointed_before_checksums_resumes_and_completes(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    # What an older streamup left: an upload created without a checksum algorithm, two parts
    # sent with Content-MD5 only, checkpointed with their MD5, in a database without the
    # checksum columns. The new agent must finish it, comparing those parts by MD5.
    local = watch_dir / "old.mp4"
    data = os.urandom(12 * MiB + 4321)
    local.write_bytes(data)
    key = "streams/old-stream/old.mp4"
    s3_client.create_bucket(Bucket=bucket)
    upload_id = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = {}
    for number in (1, 2):
        body = data[(number - 1) * 5 * MiB : number * 5 * MiB]
        md5 = md5_of(body)
        sent = s3_client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
            ContentMD5=base64.b64encode(md5).decode(),
        )  # fmt: skip
        parts[number] = PartRecord(
            number, (number - 1) * 5 * MiB, 5 * MiB, sent["ETag"], md5.hex(), utc_now()
        )
    state = local.stat()
    stream = StreamRecord(
        stream_id="old-stream", path=str(local), relative_path="old.mp4", bucket=bucket, key=key,
        status=Status.ACTIVE, identity=FileIdentity(state.st_dev, state.st_ino),
        part_size_bytes=5 * MiB, part_size_fixed=False, started_at=utc_now(),
        last_activity_at=utc_now(), upload_id=upload_id, size_bytes=state.st_size,
        mtime_ns=state.st_mtime_ns, uploaded_bytes=10 * MiB,
    )  # fmt: skip
    write_old_checkpoint(tmp_path / "state", stream, list(parts.values()))
    process = agent()
    doc = wait_metadata(s3_client, bucket, "old.mp4", deadline_s=60)
    assert process.events_named("stream.resumed") or process.events_named("stream.reconciled")
    assert [c["etag"] for c in doc["chunks"][:2]] == [parts[1].etag, parts[2].etag]
    assert_exact(s3_client, bucket, doc, local, tmp_path)
    assert doc["checksum"] is None  # the upload has no checksum algorithm: none is invented
    assert doc["integrity_proof"] == "etag_compared"
    sent_parts = [e["part"] for e in process.events_named("part.uploaded")]
    assert sent_parts == [3]  # the old parts were kept, only the tail went up
    assert process.stop() == 0


def test_parts_sent_while_nothing_was_proven_are_proven_before_the_object_is(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # Three runs on one recording: the first proves part 1 (moto reports its CRC32C); the
    # second, told to prove nothing, sends part 2 to the same upload (with its CRC32C, which
    # moto does not check); the third can prove again. Part 2 is recorded as unverified, so
    # the third sends it again before completing, rather than count it compared because the
    # server reports checksums now. Part 1 is kept: it was proven when it was sent.
    local = watch_dir / "unproven.mp4"
    data = os.urandom(12 * MiB + 4321)
    first = agent()
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    with local.open("wb") as handle:
        handle.write(data[: 5 * MiB + 1])
        handle.flush()
        wait_for(lambda: first.events_named("part.uploaded"), deadline_s=30, what="part 1")
        first.kill()
        second = agent(S3_INTEGRITY_MODE="none")
        wait_for(lambda: second.events_named("stream.reconciled"), deadline_s=30, what="resume")
        handle.write(data[5 * MiB + 1 : 10 * MiB + 1])
        handle.flush()
        wait_for(lambda: second.events_named("part.uploaded"), deadline_s=30, what="part 2")
        second.kill()
        third = agent()
        wait_for(lambda: third.events_named("stream.reconciled"), deadline_s=30, what="resume")
        handle.write(data[10 * MiB + 1 :])
    doc = wait_metadata(s3_client, bucket, "unproven.mp4", deadline_s=60)
    assert_proven(s3_client, bucket, doc, local, tmp_path)
    assert doc["sha256"] == sha256_file(local)
    sent = sorted(e["part"] for e in third.events_named("part.uploaded"))
    assert sent == [2, 3]  # the unverified part again, and the tail; part 1 stays
    assert third.stop() == 0


def write_old_checkpoint(state_dir: Path, stream: StreamRecord, parts: list[PartRecord]) -> None:
    """A SQLite checkpoint as a streamup from before checksums wrote it."""

    async def write() -> None:
        store = SqliteStore(state_dir)
        await store.open()
        await store.save_stream(stream)
        for part in parts:
            await store.record_part(stream.stream_id, part, stream.uploaded_bytes, utc_now())
        await store.close()

    asyncio.run(write())
    with sqlite3.connect(state_dir / "streamup.db") as conn:
        conn.execute("ALTER TABLE streams DROP COLUMN checksum_algorithm")
        conn.execute("ALTER TABLE parts DROP COLUMN crc32c_hex")
        conn.execute("ALTER TABLE parts DROP COLUMN proof")
    conn.close()


def overwrite_after_completion(proxy: FaultProxy, s3: Any, bucket: str, name: str) -> list[int]:
    """Once the agent has completed its upload of `name`, another writer puts other bytes at the
    key before the agent's HeadObject reaches the server: the object is no longer its parts."""
    done: list[int] = []

    def hook(data: bytes) -> None:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        if line.startswith("POST ") and name in line and "uploadId=" in line:
            done.append(0)  # the completion is on its way
        elif line.startswith("HEAD ") and name in line and len(done) == 1:
            key = line.split(" ")[1].split("?")[0].split(f"/{bucket}/", 1)[1]
            s3.put_object(Bucket=bucket, Key=key, Body=b"somebody else's bytes")
            done.append(1)

    proxy.before_forward = hook
    return done


def test_a_completed_object_unlike_its_parts_is_deleted_and_sent_again_across_a_kill(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # The object's own proof after completion (HeadObject: size, CRC32C, ETag): an object
    # that is not the parts is never certified; it is deleted and the stream sent again, and a
    # kill right after the delete loses nothing.
    local = tmp_path / "overwritten.mp4"
    local.write_bytes(os.urandom(6 * MiB))
    overwritten = overwrite_after_completion(proxy, s3_client, bucket, "overwritten.mp4")
    first = agent(S3_ENDPOINT_URL=proxy.url, STREAMUP_CRASH_AT="after_mismatch_delete")
    wait_for(lambda: first.events_named("agent.started"), deadline_s=30, what="start")
    shutil.copy(local, watch_dir / "overwritten.mp4")
    wait_for(lambda: first.proc.poll() is not None, deadline_s=60, what="the crash")
    assert overwritten == [0, 1]
    (mismatch,) = first.events_named("stream.object_mismatch")
    assert "bytes" in mismatch["reason"]
    second = agent(S3_ENDPOINT_URL=proxy.url)
    doc = wait_metadata(s3_client, bucket, "overwritten.mp4", deadline_s=60)
    assert_proven(s3_client, bucket, doc, local, tmp_path)
    assert doc["sha256"] == sha256_file(local)
    assert second.stop() == 0
