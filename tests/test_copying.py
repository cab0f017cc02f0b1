"""One copied part of an extension against moto: proven by its ETag, sent instead when the copy
is not the file's bytes or the server cannot copy."""

from __future__ import annotations

import os

from streamup.checksums import crc32c_of, md5_of
from streamup.files.source import PartData, read_mark
from streamup.models import Proof
from streamup.s3.client import S3Storage
from streamup.s3.integrity import Capabilities, ProofMode
from streamup.s3.parts import MiB, PartSpan
from streamup.stream.copying import copy_or_none

ETAG_MODE = Capabilities.forced(ProofMode.ETAG)


def part(body: bytes, number: int = 1, offset: int = 0) -> PartData:
    span = PartSpan(number, offset, len(body))
    return PartData(span, body, crc32c_of(body), md5_of(body), read_mark())


async def completed(storage: S3Storage, key: str, body: bytes) -> None:
    upload_id = await storage.create_upload(key, "video/mp4")
    etag = (await storage.upload_part(key, upload_id, 1, body, md5=md5_of(body))).etag
    await storage.complete_upload(key, upload_id, [(1, etag, None)])


async def test_a_copy_of_the_files_bytes_is_proven_and_any_other_is_sent_instead(
    storage: S3Storage,
) -> None:
    old = os.urandom(6 * MiB)
    await completed(storage, "rec", old)
    upload_id = await storage.create_upload("rec", "video/mp4")
    proven = await copy_or_none(storage, "rec", upload_id, part(old[: 5 * MiB]), ETAG_MODE)
    assert proven is not None and proven.etag.strip('"') == md5_of(old[: 5 * MiB]).hex()
    assert proven.proof is Proof.ETAG_COMPARED  # the copy's ETag is the MD5 of the file's bytes
    # The file holds other bytes there than the object (it changed after the plan): not copied.
    changed = bytes([old[0] ^ 1]) + old[1 : 5 * MiB]
    assert await copy_or_none(storage, "rec", upload_id, part(changed), ETAG_MODE) is None
    # No object to copy from (a non-retryable refusal): sent instead, not a failed stream.
    other = await storage.create_upload("gone", "video/mp4")
    assert await copy_or_none(storage, "gone", other, part(old[: 5 * MiB]), ETAG_MODE) is None
    await storage.abort_upload("rec", upload_id)
    await storage.abort_upload("gone", other)
