"""The S3 client against real HTTP servers (moto, and Ceph RGW where marked): S3's rules, error
translation, retries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest

from streamup.checksums import crc32c_of, multipart_etag
from streamup.errors import NoSuchUpload, StorageError, StreamupError
from streamup.retry import Backoff, retrying
from streamup.s3.client import RemoteObject, S3Storage
from tests.conftest import BOTH_SERVERS
from tests.servers import free_port

MiB = 1024 * 1024


async def send(storage: S3Storage, key: str, upload_id: str, number: int, body: bytes) -> str:
    md5 = hashlib.md5(body).digest()
    return (await storage.upload_part(key, upload_id, number, body, md5=md5)).etag


@BOTH_SERVERS
async def test_bucket_is_created_once(storage: S3Storage) -> None:
    assert await storage.ensure_bucket() is False


async def test_list_parts_follows_pagination_past_1000_parts(storage: S3Storage) -> None:
    upload_id = await storage.create_upload("many", "video/mp4")
    sem = asyncio.Semaphore(16)

    async def one(number: int) -> None:
        async with sem:
            await send(storage, "many", upload_id, number, number.to_bytes(2, "big"))

    await asyncio.gather(*(one(n) for n in range(1, 1206)))
    parts = await storage.list_parts("many", upload_id)
    assert sorted(parts) == list(range(1, 1206))
    assert parts[1205].size_bytes == 2
    await storage.abort_upload("many", upload_id)


@BOTH_SERVERS
async def test_small_part_that_is_not_the_last_is_refused_at_completion(
    storage: S3Storage,
) -> None:
    upload_id = await storage.create_upload("small", "video/mp4")
    etags = [
        (n, await send(storage, "small", upload_id, n, os.urandom(1000)), None) for n in (1, 2)
    ]
    with pytest.raises(StorageError) as caught:
        await storage.complete_upload("small", upload_id, etags)
    assert caught.value.code == "EntityTooSmall"
    assert not caught.value.retryable


@BOTH_SERVERS
async def test_completed_object_etag_and_forgotten_upload(storage: S3Storage) -> None:
    upload_id = await storage.create_upload("done", "video/mp4")
    first, last = os.urandom(5 * MiB), b"tail"
    etags = [
        (1, await send(storage, "done", upload_id, 1, first), None),
        (2, await send(storage, "done", upload_id, 2, last), None),
    ]
    await storage.complete_upload("done", upload_id, etags)
    expected = multipart_etag([hashlib.md5(first).digest(), hashlib.md5(last).digest()])
    remote = await storage.head_object("done")
    assert remote is not None and (remote.size_bytes, remote.etag) == (5 * MiB + 4, expected)
    assert await storage.head_object("nothing-here") is None
    with pytest.raises(NoSuchUpload):
        await storage.list_parts("done", upload_id)


async def test_composite_crc32c_upload_reports_the_checksum_of_the_part_checksums(
    storage: S3Storage,
) -> None:
    upload_id = await storage.create_upload("crc", "video/mp4", crc32c=True)
    bodies = [os.urandom(5 * MiB), b"the tail"]
    etags = []
    for number, body in enumerate(bodies, start=1):
        digest = crc32c_of(body)
        etag = (await storage.upload_part("crc", upload_id, number, body, crc32c=digest)).etag
        etags.append((number, etag, digest))
    await storage.complete_upload("crc", upload_id, etags)
    remote = await storage.head_object("crc")
    expected = base64.b64encode(crc32c_of(b"".join(crc32c_of(b) for b in bodies))).decode()
    assert remote == RemoteObject(5 * MiB + 8, remote.etag, expected, "COMPOSITE")


@BOTH_SERVERS
async def test_every_answer_about_an_aborted_upload_says_the_upload_is_gone(
    storage: S3Storage,
) -> None:
    # RGW answers ListParts with 404 NoSuchKey and Complete with 500 InternalError here; both
    # must read as NoSuchUpload (never retried as if the server were merely busy).
    upload_id = await storage.create_upload("gone", "video/mp4")
    body = os.urandom(5 * MiB)
    etags = [(1, await send(storage, "gone", upload_id, 1, body), None)]
    await storage.abort_upload("gone", upload_id)
    with pytest.raises(NoSuchUpload):
        await storage.list_parts("gone", upload_id)
    with pytest.raises(NoSuchUpload):
        await send(storage, "gone", upload_id, 2, b"tail")
    with pytest.raises(NoSuchUpload):
        await storage.complete_upload("gone", upload_id, etags)
    await storage.abort_upload("gone", upload_id)  # aborting twice is not an error
    assert await storage.head_object("gone") is None


async def test_unreachable_endpoint_is_a_retryable_error() -> None:
    client = S3Storage(
        bucket="b-unreachable", region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="testing", secret_access_key="testing",
    )  # fmt: skip
    await client.open()
    try:
        with pytest.raises(StorageError) as caught:
            await client.create_upload("k", "video/mp4")
        assert caught.value.retryable
        assert "testing" not in str(caught.value)
    finally:
        await client.close()


async def test_retrying_waits_out_transient_errors_and_gives_up_on_permanent_ones() -> None:
    calls: list[int] = []
    retries: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StorageError("blip", retryable=True)
        return "ok"

    fast = Backoff(first_s=0.001, cap_s=0.004)
    result = await retrying(flaky, backoff=fast, on_retry=lambda e, n, d: retries.append(n))
    assert result == "ok" and retries == [1, 2, 3]

    async def denied() -> str:
        calls.append(1)
        raise StorageError("AccessDenied", retryable=False)

    calls.clear()
    with pytest.raises(StreamupError):
        await retrying(denied, backoff=fast)
    assert len(calls) == 1


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(first_s=0.5, factor=2.0, cap_s=30.0)
    delays = [backoff.delay_s(n) for n in range(1, 30)]
    assert all(0 < d <= 30.0 for d in delays)
    assert max(delays[10:]) >= 15.0  # it reaches the cap region
    assert len(set(delays)) > 20  # jitter: not one fixed ladder


async def test_get_bytes_reads_a_small_object_and_says_none_when_it_is_missing(
    storage: S3Storage,
) -> None:
    await storage.put_bytes("doc.json", b'{"a": 1}', "application/json")
    assert await storage.get_bytes("doc.json") == b'{"a": 1}'
    assert await storage.get_bytes("missing.json") is None
    with pytest.raises(StorageError, match="larger than 4 bytes") as caught:
        await storage.get_bytes("doc.json", max_bytes=4)
    assert caught.value.retryable is False


def test_backoff_stays_capped_however_long_the_outage_lasts() -> None:
    # 2.0 ** 1024 overflows a float: attempt 1025 (8.5 hours at the 30 s cap) must not raise.
    backoff = Backoff(first_s=0.5, factor=2.0, cap_s=30.0)
    assert all(15.0 <= backoff.delay_s(n) <= 30.0 for n in (1024, 1025, 10**6))


@BOTH_SERVERS
async def test_completion_never_replaces_an_existing_object(storage: S3Storage) -> None:
    # Ceph RGW ignores If-None-Match on CompleteMultipartUpload: without the client's own check,
    # the second completion below silently replaces the object.
    first = await storage.create_upload("once", "video/mp4")
    kept = os.urandom(1000)
    await storage.complete_upload(
        "once", first, [(1, await send(storage, "once", first, 1, kept), None)]
    )
    before = await storage.head_object("once")
    second = await storage.create_upload("once", "video/mp4")
    etags = [(1, await send(storage, "once", second, 1, b"other bytes"), None)]
    with pytest.raises(StorageError) as caught:
        await storage.complete_upload("once", second, etags)
    assert caught.value.code == "PreconditionFailed"
    assert before is not None
    assert (before.size_bytes, before.etag) == (1000, multipart_etag([hashlib.md5(kept).digest()]))
    assert await storage.head_object("once") == before
    await storage.abort_upload("once", second)


@BOTH_SERVERS
async def test_copy_part_builds_a_part_from_any_range_of_a_completed_object(
    storage: S3Storage,
) -> None:
    # The server-side copy that lets a shifted (faststart) or grown file reuse what S3 holds:
    # a range at an odd offset, and the copied part's ETag is the MD5 of exactly those bytes.
    source = os.urandom(11 * MiB)
    upload_id = await storage.create_upload("source", "video/mp4")
    first_part = await send(storage, "source", upload_id, 1, source[: 6 * MiB])
    second_part = await send(storage, "source", upload_id, 2, source[6 * MiB :])
    await storage.complete_upload(
        "source", upload_id, [(1, first_part, None), (2, second_part, None)]
    )
    head = b"a new head"
    upload_id = await storage.create_upload("shifted", "video/mp4")
    copied = await storage.copy_part("shifted", upload_id, 2, "source", 1234, 1234 + 5 * MiB - 1)
    assert copied.etag.strip('"') == hashlib.md5(source[1234 : 1234 + 5 * MiB]).hexdigest()
    rest = await storage.copy_part("shifted", upload_id, 3, "source", 1234 + 5 * MiB, 11 * MiB - 1)
    first = await send(storage, "shifted", upload_id, 1, head + os.urandom(5 * MiB))
    await storage.complete_upload(
        "shifted", upload_id, [(1, first, None), (2, copied.etag, None), (3, rest.etag, None)]
    )
    body = await storage.get_bytes("shifted", max_bytes=32 * MiB)
    assert body is not None and body[5 * MiB + len(head) :] == source[1234:]


@BOTH_SERVERS
async def test_an_extension_replaces_only_the_object_it_was_built_from(
    storage: S3Storage,
) -> None:
    # A completed file that grew (stream.extension): the longer object is built at the same key
    # from the completed one plus the new bytes, and completing it replaces that object only.
    old = os.urandom(6 * MiB)
    upload_id = await storage.create_upload("rec", "video/mp4")
    await storage.complete_upload(
        "rec", upload_id, [(1, await send(storage, "rec", upload_id, 1, old), None)]
    )
    there = await storage.head_object("rec")
    assert there is not None
    new = os.urandom(MiB)
    upload_id = await storage.create_upload("rec", "video/mp4")
    copied = await storage.copy_part("rec", upload_id, 1, "rec", 0, len(old) - 1)
    assert copied.etag.strip('"') == hashlib.md5(old).hexdigest()
    parts = [(1, copied.etag, None), (2, await send(storage, "rec", upload_id, 2, new), None)]
    with pytest.raises(StorageError) as refused:
        await storage.complete_upload("rec", upload_id, parts, replacing='"0123-1"')
    assert refused.value.code == "PreconditionFailed"
    with pytest.raises(StorageError) as not_replacing:
        await storage.complete_upload("rec", upload_id, parts)  # never over an object otherwise
    assert not_replacing.value.code == "PreconditionFailed"
    assert await storage.head_object("rec") == there
    await storage.complete_upload("rec", upload_id, parts, replacing=there.etag)
    assert await storage.get_bytes("rec", max_bytes=16 * MiB) == old + new
    # The same extension again finds the longer object there, not the one it was built from.
    upload_id = await storage.create_upload("rec", "video/mp4")
    copied = await storage.copy_part("rec", upload_id, 1, "rec", 0, len(old) - 1)
    with pytest.raises(StorageError):
        await storage.complete_upload(
            "rec", upload_id, [(1, copied.etag, None)], replacing=there.etag
        )
    await storage.abort_upload("rec", upload_id)
    assert await storage.get_bytes("rec", max_bytes=16 * MiB) == old + new
