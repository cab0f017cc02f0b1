"""Aborting multipart uploads that no checkpoint references.

A crash between CreateMultipartUpload and its checkpoint, a wiped state folder, an agent that
was removed: each leaves an upload whose parts cost money forever (S3 bills parts of unfinished
uploads). Uploads under our key prefix that no stream knows are aborted once nothing has been
added to them for the configured age. Age is judged by the newest part, not the upload's start,
so a long recording that another agent (with its own checkpoint store) is still feeding is safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import structlog

from streamup.errors import StorageError
from streamup.storage import RemoteUpload, S3Storage

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
) -> int:
    """Abort stale uploads under `prefix` that are not in `known_upload_ids`; return the count."""
    known = set(known_upload_ids)
    aborted = 0
    for upload in await storage.list_uploads(prefix):
        if upload.upload_id in known:
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
