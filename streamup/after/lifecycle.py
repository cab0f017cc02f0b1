"""Pure decisions of the local-file action: may a completed file be deleted or moved now, and
what a checkpointed intent found at start-up means. No I/O and no clock: the observations and
the time are arguments (`after.local_action` makes them and acts).

A file is touched only when every one of these holds at the moment of the action: its stream is
`completed` (object and metadata in S3); the object was proven equal to the file from the
server's side (`Proof`, recorded when the stream finished); the file is the one verified
(identity, size, mtime, ctime); no process on this host holds it open for writing; HeadObject
of the object gives its size and digests, and the metadata object exists. Anything else keeps
the file, for one of the `Keep` reasons.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from streamup.checksums import etag_hex
from streamup.models import CompletedRecord, EndReason, FileState, Status

UNVERIFIED = "unverified"  # models.Proof.UNVERIFIED, as the record stores it


class Action(StrEnum):
    """AFTER_UPLOAD."""

    KEEP = "keep"
    DELETE = "delete"
    MOVE = "move"


class Keep(StrEnum):
    """Why a completed file stays where it is (the metrics' `reason` label: a fixed set)."""

    NOT_FINISHED = "not_finished"  # no complete object with its metadata (or a partial one)
    STREAM_ACTIVE = "stream_active"  # a stream is uploading the path right now
    UNPROVEN = "unproven"  # nothing proved the object equal to the file from the server's side
    OTHER_HOST = "other_host"  # finished by an agent on another host: that one acts
    NOT_OWNER = "not_owner"  # another agent holds the action's lease
    SYMLINK = "symlink"  # the path is a link: removing it would free nothing
    FILE_CHANGED = "file_changed"  # identity, size, mtime or ctime is not what was verified
    OPEN_FOR_WRITING = "open_for_writing"  # a process on this host holds it open for writing
    WRITERS_UNKNOWN = "writers_unknown"  # /proc cannot tell who holds it open
    S3_UNREACHABLE = "s3_unreachable"  # HeadObject failed
    OBJECT_MISSING = "object_missing"  # the object is gone from S3
    METADATA_MISSING = "metadata_missing"  # the metadata JSON is gone from S3
    OBJECT_MISMATCH = "object_mismatch"  # the object's size or digests are not the record's
    TARGET_EXISTS = "target_exists"  # the move's target is another file
    ACTION_FAILED = "action_failed"  # the delete or move itself failed (permissions, space)
    RECORD_LOST = "record_lost"  # the store lost the completed record (flushed): written back


@dataclass(frozen=True, slots=True)
class Local:
    """What the file at a record's path looks like now."""

    state: FileState | None  # None: no regular file at the path
    ctime_ns: int = 0
    symlink: bool = False
    writer: bool | None = False  # held open for writing by a visible process; None: cannot tell


@dataclass(frozen=True, slots=True)
class Remote:
    """HeadObject of a completed object: size, ETag, whole-object CRC32C (base64, no `-N`)."""

    size_bytes: int
    etag: str
    crc32c: str | None


def due(record: CompletedRecord, keep_local_s: float, now: datetime) -> bool:
    """KEEP_LOCAL_SECONDS after the object was completed, the action may run."""
    return now >= record.completed_at + timedelta(seconds=keep_local_s)


def proven(record: CompletedRecord, *, accept_unproven: bool) -> bool:
    """The object was proven equal to the file from the server's side when the stream ended.
    Records from before proofs were kept prove nothing."""
    if not record.proof or not record.sha256_hex:
        return False
    return record.proof != UNVERIFIED or accept_unproven


def record_verdict(
    record: CompletedRecord, *, accept_unproven: bool, busy: bool, host_ok: bool
) -> Keep | None:
    """The part of `local_verdict` the record alone decides (no look at the file needed)."""
    if record.status is not Status.COMPLETED or record.end_reason is not EndReason.IDLE:
        return Keep.NOT_FINISHED
    if busy:
        return Keep.STREAM_ACTIVE
    if not host_ok:
        return Keep.OTHER_HOST
    if not proven(record, accept_unproven=accept_unproven):
        return Keep.UNPROVEN
    return None


def local_verdict(
    record: CompletedRecord,
    local: Local,
    *,
    accept_unproven: bool,
    busy: bool,
    host_ok: bool,
    check_ctime: bool = True,
) -> Keep | None:
    """Why the file must stay, judging from the record and the local file; None: go on.

    `busy`: a stream is working on the path. `host_ok`: this agent's host finished the stream.
    `check_ctime` is off only for a move's last step, whose hard link changed the ctime itself.
    """
    reason = record_verdict(record, accept_unproven=accept_unproven, busy=busy, host_ok=host_ok)
    if reason is not None:
        return reason
    if local.symlink:
        return Keep.SYMLINK
    if local.state is None or not record.matches(local.state):
        return Keep.FILE_CHANGED
    # ctime cannot be set by a writer: it catches bytes changed with the mtime put back.
    if check_ctime and record.ctime_ns and local.ctime_ns != record.ctime_ns:
        return Keep.FILE_CHANGED
    if local.writer is None:
        return Keep.WRITERS_UNKNOWN
    if local.writer:
        return Keep.OPEN_FOR_WRITING
    return None


def remote_verdict(
    record: CompletedRecord, remote: Remote | None, *, metadata_exists: bool, accept_unproven: bool
) -> tuple[Keep, str] | None:
    """Why S3's side does not prove the object is still the file's; None: it does."""
    if remote is None:
        return Keep.OBJECT_MISSING, f"no object at {record.key}"
    if remote.size_bytes != record.size_bytes:
        detail = f"the object holds {remote.size_bytes} bytes, the file {record.size_bytes}"
        return Keep.OBJECT_MISMATCH, detail
    compared = False
    if remote.crc32c is not None and record.object_crc32c:
        if remote.crc32c != record.object_crc32c:
            detail = f"the object's CRC32C is {remote.crc32c}, verified {record.object_crc32c}"
            return Keep.OBJECT_MISMATCH, detail
        compared = True
    # A multipart ETag (`hex-N`) is the parts' MD5s; other forms (a plain PUT, encryption)
    # prove nothing either way.
    if record.object_etag and "-" in etag_hex(remote.etag):
        if etag_hex(remote.etag) != etag_hex(record.object_etag):
            detail = f"the object's ETag is {remote.etag}, verified {record.object_etag}"
            return Keep.OBJECT_MISMATCH, detail
        compared = True
    if not compared and not accept_unproven:
        return Keep.UNPROVEN, "the server reports no digest of the object to compare"
    if not metadata_exists:
        return Keep.METADATA_MISSING, f"no metadata object at {record.key}.metadata.json"
    return None


def move_target(path: str, watch_dir: str, target_dir: str) -> str | None:
    """Where a file moves: its path relative to WATCH_DIR, kept below AFTER_UPLOAD_DIR. None
    for a path outside WATCH_DIR (nothing to keep relative to)."""
    relative = os.path.relpath(path, watch_dir)
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        return None
    return os.path.join(target_dir, relative)


def partial_path(target: str, stream_id: str) -> str:
    """The copy's name while it is written: hidden and temporary, so no watcher takes it for a
    recording, and named after the stream, so a crash's leftover is known to be ours."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.streamup-{stream_id[:8]}.partial")


def oldest_first(records: Iterable[CompletedRecord]) -> list[CompletedRecord]:
    """The order the free-space guard deletes in: the oldest recording (mtime) first."""
    return sorted(records, key=lambda r: (r.mtime_ns, r.path))


class Resume(StrEnum):
    """What an intent found at start-up means (a crash interrupted the action)."""

    REDO = "redo"  # nothing irreversible happened: the checks and the action run again
    UNLINK_SOURCE = "unlink_source"  # the move's copy is complete at its target: remove the source
    DONE = "done"  # the source is gone (or the path names another file): touch nothing
    CONFLICT = "conflict"  # the target holds some other file: leave both


def resume_intent(
    record: CompletedRecord,
    source: FileState | None,
    target: FileState | None,
    *,
    target_is_copy: bool,
) -> Resume:
    """`target_is_copy`: the target's bytes hash to the record's SHA-256 (asked only when the
    target exists and is not the source itself)."""
    if source is None or not record.matches(source):
        return Resume.DONE
    if record.local_action != Action.MOVE.value or target is None:
        return Resume.REDO
    if target.identity == source.identity or target_is_copy:
        return Resume.UNLINK_SOURCE
    return Resume.CONFLICT


def host_may_act(record: CompletedRecord, *, shared: bool, host: str) -> bool:
    """With a shared store, the host that finished the stream acts on its file (a record that
    names no host is anyone's); alone on its store, an agent acts on every file."""
    return not shared or record.host in ("", host)


def carried_out(
    record: CompletedRecord, source: FileState | None, target: FileState | None
) -> bool:
    """After a crash: did the intent's step happen? The verified file is gone from its path
    (another file there is not ours) and, for a move, something is at the target (the link or
    the verified copy is put there before the source is unlinked)."""
    if source is not None and source.identity == record.identity:
        return False  # still there (changed since): nothing was deleted or moved
    return record.local_action != Action.MOVE.value or target is not None


def resumed_trigger(record: CompletedRecord, action: Action) -> str:
    """What asked for an intent finished after a crash (the metrics' `trigger`). The intent
    does not say: a delete under another AFTER_UPLOAD came from the free-space guard (unless
    the setting changed across the restart)."""
    if record.local_action == Action.DELETE.value and action is not Action.DELETE:
        return "min_free"
    return "after_upload"
