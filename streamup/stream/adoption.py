"""An upload in progress that the checkpoint store lost (a recording was being uploaded when
STATE_DIR was lost, or when Redis lost everything while no agent ran): found in S3 and taken up
again, so that the parts S3 holds are not sent a second time.

At a new stream's start, before a new upload is made, the multipart uploads in progress at the
keys the file's object may have (stream.recognition's candidates: its numbered keys, or its key
with some stream id), listed once per run and folder (an upload this agent makes later has a
record), that no stream in the store knows. One counts as the file's when its first part is
the file's first bytes (the part's ETag is their MD5). The stream then resumes that upload as
after a restart: `stream.recovery.reconcile` takes in every part whose ETag is the MD5 of the
file's bytes and sends the others again, and the stream goes on growing and completes as ever.
An upload whose first part is not the file's is left alone (another agent's, with its own
store), and so is one at a key that holds an object (an extension's, stream.extension: taken up
as a plain recording, its completion would meet that object); the orphan reaper deals with
them as before.
"""

from __future__ import annotations

import asyncio

import structlog

from streamup.checkpoint import CheckpointStore
from streamup.checksums import etag_hex
from streamup.errors import NoSuchUpload, StorageError
from streamup.files.budget import out_of_descriptors
from streamup.files.source import SourceFile
from streamup.models import FileState
from streamup.retry import retrying
from streamup.s3.client import RemoteUpload, S3Storage
from streamup.s3.keys import KeyFields, KeyTemplate
from streamup.s3.parts import PartSpan

log = structlog.get_logger("streamup")


class Adoption:
    """Finds the lost upload of a file; one per agent run (it keeps the listings it made)."""

    def __init__(self, storage: S3Storage, store: CheckpointStore, template: KeyTemplate) -> None:
        self.storage = storage
        self.store = store
        self.template = template
        self._listed: dict[str, list[RemoteUpload]] = {}
        self._taken: set[str] = set()  # upload ids taken up this run
        self._lock = asyncio.Lock()

    async def lost_upload(
        self, fields: KeyFields, path: str, state: FileState
    ) -> RemoteUpload | None:
        """The upload in progress that holds the beginning of this file and that no stream in
        the store knows, or None. Errors mean None: the file goes up as a new recording."""
        try:
            found = await self._at_candidate_keys(fields)
            if not found:
                return None
            known = {s.upload_id for s in await retrying(self.store.unfinished_streams)}
            for upload in sorted(found, key=lambda u: u.initiated_at, reverse=True):
                if upload.upload_id in known or upload.upload_id in self._taken:
                    continue
                if await self._over_an_object(upload):
                    continue  # an extension's (stream.extension): not a plain recording's
                if await self._begins_the_file(upload, path, state):
                    self._taken.add(upload.upload_id)
                    log.info("stream.upload_found", path=path, key=upload.key,
                             upload_id=upload.upload_id)  # fmt: skip
                    return upload
        except (StorageError, ValueError) as exc:
            log.warning("stream.upload_not_found", path=path, reason=str(exc))
        except OSError as exc:
            if out_of_descriptors(exc):
                raise  # deferred, not uploaded: the next scan looks again (stream.discovery)
            log.warning("stream.upload_not_found", path=path, reason=exc.strerror)
        return None

    async def _at_candidate_keys(self, fields: KeyFields) -> list[RemoteUpload]:
        search = self.template.search(fields)
        if search is None:
            return []
        return [u for u in await self._listing(search.prefix) if search.fits(u.key)]

    async def _listing(self, prefix: str) -> list[RemoteUpload]:
        async with self._lock:
            if prefix not in self._listed:
                self._listed[prefix] = await retrying(lambda: self.storage.list_uploads(prefix))
            return self._listed[prefix]

    async def _over_an_object(self, upload: RemoteUpload) -> bool:
        return await retrying(lambda: self.storage.head_object(upload.key)) is not None

    async def _begins_the_file(self, upload: RemoteUpload, path: str, state: FileState) -> bool:
        try:
            parts = await retrying(lambda: self.storage.list_parts(upload.key, upload.upload_id))
        except NoSuchUpload:
            return False  # completed or aborted since the listing
        first = parts.get(1)
        if first is None or first.size_bytes > state.size_bytes:
            return False
        source = SourceFile.reopen(path, state.identity, same_device=True)
        if source is None:
            return False
        try:
            data = await source.read_part(PartSpan(1, 0, first.size_bytes), with_md5=True)
        finally:
            source.close()
        return data is not None and data.md5 is not None and data.md5.hex() == etag_hex(first.etag)
