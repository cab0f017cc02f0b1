"""Which upload in progress a recording takes up after the store lost it (stream.adoption): only
one at a key its object may have, unknown to the store, whose first part is the file's
beginning (real moto, streamup's own S3 client, a SQLite store)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamup.checkpoint.sqlite import SqliteStore
from streamup.files.source import stat_path
from streamup.models import FileState
from streamup.s3.client import S3Storage
from streamup.s3.keys import KeyFields, parse_template
from streamup.stream.adoption import Adoption
from tests.test_checkpoint_contract import make_stream

MiB = 1024 * 1024
PART = 5 * MiB


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "state")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def recording(tmp_path: Path) -> tuple[str, FileState, bytes]:
    path = tmp_path / "cam1" / "a.mp4"
    path.parent.mkdir()
    body = os.urandom(PART + 1000)
    path.write_bytes(body)
    state = stat_path(str(path))
    assert state is not None
    return str(path), state, body


def fields() -> KeyFields:
    """A new stream's fields for the file: a new stream id, the key it would get."""
    return KeyFields("streams", "new-id", "cam1/a.mp4", "edge-1", datetime(2026, 12, 1, tzinfo=UTC))


async def upload_with_first_part(storage: S3Storage, key: str, first: bytes) -> str:
    upload_id = await storage.create_upload(key, "video/mp4")
    await storage.upload_part(key, upload_id, 1, first)
    return upload_id


async def test_the_upload_that_begins_the_file_is_found_and_only_once(
    storage: S3Storage, store: SqliteStore, tmp_path: Path
) -> None:
    path, state, body = recording(tmp_path)
    template = parse_template("{prefix}/{stream_id}/{path}")
    ours = await upload_with_first_part(storage, "streams/old-id/cam1/a.mp4", body[:PART])
    foreign = await upload_with_first_part(storage, "streams/x-id/cam1/a.mp4", os.urandom(PART))
    await upload_with_first_part(storage, "streams/y-id/cam2/a.mp4", body[:PART])  # other path
    adoption = Adoption(storage, store, template)
    found = await adoption.lost_upload(fields(), path, state)
    assert found is not None
    assert (found.key, found.upload_id) == ("streams/old-id/cam1/a.mp4", ours)
    assert found.upload_id != foreign
    # Taken up once: a second look (another start of the same file this run) finds nothing.
    assert await adoption.lost_upload(fields(), path, state) is None


async def test_an_upload_the_store_knows_is_not_taken(
    storage: S3Storage, store: SqliteStore, tmp_path: Path
) -> None:
    path, state, body = recording(tmp_path)
    key = "streams/old-id/cam1/a.mp4"
    upload_id = await upload_with_first_part(storage, key, body[:PART])
    await store.save_stream(make_stream("old-id", key=key, upload_id=upload_id))
    adoption = Adoption(storage, store, parse_template("{prefix}/{stream_id}/{path}"))
    assert await adoption.lost_upload(fields(), path, state) is None


async def test_numbered_keys_are_looked_at_up_to_the_folders_listing(
    storage: S3Storage, store: SqliteStore, tmp_path: Path
) -> None:
    path, state, body = recording(tmp_path)
    await upload_with_first_part(storage, "streams/cam1/a.mp4", os.urandom(PART))  # another's
    ours = await upload_with_first_part(storage, "streams/cam1/a-2.mp4", body[:PART])
    adoption = Adoption(storage, store, parse_template("{prefix}/{path}"))
    found = await adoption.lost_upload(fields(), path, state)
    assert found is not None and found.upload_id == ours
    assert found.checksum_algorithm == ""  # created without one


async def test_an_upload_over_an_object_is_not_taken(
    storage: S3Storage, store: SqliteStore, tmp_path: Path
) -> None:
    """An extension's upload replaces the object at its key: not a plain recording's."""
    path, state, body = recording(tmp_path)
    key = "streams/cam1/a.mp4"
    await storage.put_bytes(key, body[:100], "video/mp4")
    await upload_with_first_part(storage, key, body[:PART])
    adoption = Adoption(storage, store, parse_template("{prefix}/{path}"))
    assert await adoption.lost_upload(fields(), path, state) is None
