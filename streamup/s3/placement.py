"""Where an object goes and what it carries, as far as the server must be asked: a key no other
object holds, tags that the server really kept, options the server accepts.

The decisions are pure (`s3.keys`, `s3.object_options`); this module does the few requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from streamup.checkpoint import CheckpointStore
from streamup.errors import StorageError
from streamup.retry import retrying
from streamup.s3.client import S3Storage
from streamup.s3.keys import (
    MAX_KEY_NUMBER,
    METADATA_SUFFIX,
    KeyFields,
    KeyTemplate,
    check_key,
    numbered,
)
from streamup.s3.object_options import ObjectOptions, tags_to_apply


@dataclass(frozen=True, slots=True)
class Placement:
    """The key a new stream gets; `collision_of` is the key its template gave, when that one
    was taken (empty otherwise)."""

    key: str
    collision_of: str = ""


class KeyPlanner:
    """Gives each new stream its key, and never one that another object or stream holds.

    With `{stream_id}` in the template every key is new by construction. Without it, the key
    is checked at the stream's start against the bucket (`free_key`) and against every
    unfinished stream the checkpoint store knows (with a shared Redis: every agent's), and
    kept reserved here until the stream is claimed in the store, so two files that start at
    once in this agent cannot both take it. What slips through (two agents with stores of their
    own, a race between two agents on one Redis) meets `If-None-Match: *` at completion.
    """

    def __init__(self, storage: S3Storage, store: CheckpointStore, template: KeyTemplate) -> None:
        self.storage = storage
        self.store = store
        self.template = template
        self._lock = asyncio.Lock()
        self._reserved: set[str] = set()

    async def place(self, fields: KeyFields, live_keys: Iterable[str]) -> Placement:
        """The key of a new stream. ValueError: the template makes no valid key for this file
        (too long, say); StorageError: the bucket could not be asked (permanent errors only,
        transient ones are retried)."""
        wanted = self.template.render(fields)
        if self.template.unique:
            return Placement(wanted)
        async with self._lock:
            unfinished = await retrying(self.store.unfinished_streams)
            taken = {r.key for r in unfinished} | set(live_keys) | self._reserved
            placement = await retrying(lambda: free_key(self.storage, wanted, taken))
            self._reserved.add(placement.key)
        return placement

    def release(self, key: str) -> None:
        """The stream holding `key` is in the checkpoint store now (or was never started)."""
        self._reserved.discard(key)


async def free_key(storage: S3Storage, wanted: str, taken: Collection[str]) -> Placement:
    """The first of `wanted`, `wanted-2`, ... that no stream in `taken` uses and that holds no
    object, no metadata object and no multipart upload in progress."""
    for number in range(1, MAX_KEY_NUMBER + 1):
        key = numbered(wanted, number)
        try:
            check_key(key)
        except ValueError as exc:
            raise StorageError(f"no free key for {wanted!r}: {key!r} is invalid ({exc})") from None
        if key in taken or await _occupied(storage, key):
            continue
        return Placement(key, "" if key == wanted else wanted)
    raise StorageError(
        f"no free key for {wanted!r}: {MAX_KEY_NUMBER} numbered keys are taken (add a field "
        "that tells recordings apart to S3_KEY_TEMPLATE, e.g. {started:%H%M%S} or {stream_id})"
    )


async def _occupied(storage: S3Storage, key: str) -> bool:
    if await storage.head_object(key) is not None:
        return True
    # A metadata object left behind (its video deleted) would be taken for this stream's own.
    if await storage.head_object(key + METADATA_SUFFIX) is not None:
        return True
    # Another agent (with a checkpoint store of its own) may be streaming into the key.
    return any(upload.key == key for upload in await storage.list_uploads(key))


async def ensure_tags(storage: S3Storage, key: str, wanted: tuple[tuple[str, str], ...]) -> bool:
    """Make sure a completed object carries `wanted`; True when they had to be added (the server
    dropped those given at CreateMultipartUpload, as Ceph RGW does). Raises StorageError when
    the server does not keep them even then."""
    if not wanted:
        return False
    tags = tags_to_apply(wanted, await storage.get_tags(key))
    if tags is None:
        return False
    await storage.put_tags(key, tags)
    if tags_to_apply(wanted, await storage.get_tags(key)) is not None:
        raise StorageError(
            f"the server does not keep the tags of {key!r} (S3_OBJECT_TAGS), even after "
            "PutObjectTagging",
            code="TagsNotKept",
        )
    return True


def _alone(options: ObjectOptions) -> dict[str, ObjectOptions]:
    """Each configured option on its own, by the setting that configures it."""
    empty = ObjectOptions()
    single = {
        "S3_SSE": dataclasses.replace(empty, sse=options.sse, kms_key_id=options.kms_key_id),
        "S3_STORAGE_CLASS": dataclasses.replace(empty, storage_class=options.storage_class),
        "S3_OBJECT_TAGS": dataclasses.replace(empty, tags=options.tags),
        "S3_OBJECT_METADATA": dataclasses.replace(empty, metadata=options.metadata),
    }
    return {name: option for name, option in single.items() if option != empty}


async def refused_option(
    storage: S3Storage, key_prefix: str, options: ObjectOptions
) -> tuple[str, StorageError] | None:
    """At start-up: does the server take these options? One throwaway upload, aborted at once.
    On a refusal, each option is tried alone to name the setting to fix. Transient errors
    propagate (the caller retries)."""
    if options == ObjectOptions():
        return None
    key = f"{key_prefix.rstrip('/')}/.streamup-options-{uuid.uuid4().hex}".lstrip("/")
    refusal = await _try(storage, key, options)
    if refusal is None:
        return None
    for setting, alone in _alone(options).items():
        error = await _try(storage, key, alone)
        if error is not None:
            return setting, error
    return "S3_SSE, S3_STORAGE_CLASS, S3_OBJECT_TAGS, S3_OBJECT_METADATA", refusal


async def _try(storage: S3Storage, key: str, options: ObjectOptions) -> StorageError | None:
    try:
        upload_id = await storage.create_upload(key, "application/octet-stream", options=options)
    except StorageError as exc:
        if exc.retryable:
            raise
        return exc
    await storage.abort_upload(key, upload_id)
    return None
