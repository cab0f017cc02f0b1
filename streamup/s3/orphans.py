"""Aborting multipart uploads that no checkpoint references.

A crash between CreateMultipartUpload and its checkpoint, a wiped state folder, an agent that
was removed: each leaves an upload whose parts cost money forever (S3 bills parts of unfinished
uploads). Uploads under our key prefix that no stream knows are aborted once nothing has been
added to them for the configured age. Age is judged by the newest part, not the upload's start,
so a long recording that another agent (with its own checkpoint store) is still feeding is safe.

Which uploads are ours: those under the fixed leading part of S3_KEY_TEMPLATE (`streams/` for the
default template; `s3.keys.KeyTemplate.fixed_prefix`). A template that starts with a field that
changes per stream (`{dir}/...`) has no such part; the reaper then looks only at uploads whose
key the checkpoint store knows (a stream's, unfinished or completed) under an upload id it does
not know: the uploads a crash before the checkpoint, or a restarted upload, leaves behind.
Anything else in the bucket may be someone else's and is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import structlog

from streamup.checkpoint import CheckpointStore
from streamup.errors import StorageError, StreamupError
from streamup.models import utc_now
from streamup.s3.client import RemoteUpload, S3Storage
from streamup.s3.rebuild_plan import stale_upload_of

log = structlog.get_logger("streamup")


def is_stale(
    upload: RemoteUpload, newest_part_at: datetime | None, now: datetime, max_age: timedelta
) -> bool:
    """True when neither the upload nor any of its parts is younger than `max_age`."""
    last = max(filter(None, (upload.initiated_at, newest_part_at)))
    return now - last >= max_age


async def abort_orphans(
    storage: S3Storage,
    prefix: str,
    known_upload_ids: Iterable[str],
    *,
    now: datetime,
    max_age: timedelta,
    known_keys: set[str] | None = None,
) -> int:
    """Abort stale uploads under `prefix` that are not in `known_upload_ids` (and, given
    `known_keys`, only those at one of these keys); return the count."""
    known = set(known_upload_ids)
    aborted = 0
    for upload in await storage.list_uploads(prefix):
        if upload.upload_id in known:
            continue
        if known_keys is not None and upload.key not in known_keys:
            continue
        try:
            parts = await storage.list_parts(upload.key, upload.upload_id)
        except StorageError:
            continue  # gone meanwhile, or not ours to read: leave it
        newest = max((p.modified_at for p in parts.values() if p.modified_at), default=None)
        if not is_stale(upload, newest, now, max_age):
            continue
        await storage.abort_upload(upload.key, upload.upload_id)
        aborted += 1
        log.warning("upload.orphan_aborted", key=upload.key, parts=len(parts))
    return aborted


async def reap_orphans(
    storage: S3Storage,
    store: CheckpointStore,
    prefix: str,
    *,
    max_age_s: float,
    live_upload_ids: Callable[[], set[str | None]],
    stopping: asyncio.Event,
) -> None:
    """At start-up and then hourly: abort the forgotten uploads under `prefix`; with an empty
    `prefix`, only those at keys the checkpoint store knows."""
    max_age = timedelta(seconds=max_age_s)
    period_s = min(3600.0, max(1.0, max_age_s))
    scope = "uploads under the prefix" if prefix else "uploads at keys the checkpoints know"
    log.info("upload.orphan_scope", prefix=prefix or None, scope=scope)
    while not stopping.is_set():
        try:
            # Every stream any agent still works on (a shared store knows them all).
            unfinished = await store.unfinished_streams()
            known = {r.upload_id for r in unfinished} | live_upload_ids()
            known |= {stale_upload_of(r) for r in unfinished}  # a rebuild's stale upload
            keys = None
            if not prefix:
                completed = await store.completed_files()
                keys = {r.key for r in unfinished} | {r.key for r in completed.values()}
            await abort_orphans(
                storage, prefix, {k for k in known if k}, now=utc_now(), max_age=max_age,
                known_keys=keys,
            )  # fmt: skip
        except StreamupError as exc:
            log.warning("upload.orphan_check_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period_s)
