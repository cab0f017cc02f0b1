"""Values that cross module boundaries: stream and part records, statuses, observations.

Everything here is pure data: frozen dataclasses and str-valued enums, because statuses are
persisted in the checkpoint store and must read back the same after a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class Status(StrEnum):
    """Where a stream is in its life. The seed's strings are kept; they are persisted."""

    ACTIVE = "active"
    PENDING_COMPLETION = "pending_completion"
    S3_COMPLETED = "s3_completed"
    COMPLETED = "completed"
    FAILED_S3_COMPLETE = "failed_s3_complete"
    FAILED_METADATA_GENERATION = "failed_metadata_generation"
    FAILED_METADATA_UPLOAD = "failed_metadata_upload"
    FAILED_FINALIZATION_META = "failed_finalization_meta"
    ABORTED_NO_PARTS = "aborted_no_parts"

    @property
    def is_final(self) -> bool:
        """A final stream has nothing left to do; every other status resumes after a restart."""
        return self in (Status.COMPLETED, Status.ABORTED_NO_PARTS)

    @property
    def is_failed(self) -> bool:
        return self.value.startswith("failed_")

    @property
    def object_completed(self) -> bool:
        """True once CompleteMultipartUpload has succeeded: never complete a second time."""
        return self in (
            Status.S3_COMPLETED,
            Status.COMPLETED,
            Status.FAILED_METADATA_GENERATION,
            Status.FAILED_METADATA_UPLOAD,
            Status.FAILED_FINALIZATION_META,
        )


class Claim(StrEnum):
    """What the checkpoint store says about a file an agent has just found."""

    NEW = "new"  # registered now: the finder owns the new stream
    EXISTING = "existing"  # an unfinished stream already covers this path and inode
    COMPLETED = "completed"  # this very file (inode, size, mtime) was completed already


class EndReason(StrEnum):
    """Why a stream ended; goes into the metadata and the completed record."""

    IDLE = "idle"  # the file stopped changing: the normal end of a recording
    FILE_DELETED = "file_deleted"  # the path vanished; the agent still held the file open
    FILE_REPLACED = "file_replaced"  # another file (new inode) took the path
    FILE_LOST = "file_lost"  # the file vanished while the agent was down: object is partial


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with an explicit offset, the one format every timestamp uses."""
    return moment.astimezone(UTC).isoformat()


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path names: a new inode under the same path is a different recording."""

    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class FileState:
    """One `stat()` of a file: the truth that filesystem events only hint at."""

    identity: FileIdentity
    size_bytes: int
    mtime_ns: int


class Proof(StrEnum):
    """How the server proved bytes it holds: a part when it stored it, an object as its least
    proven part (the metadata's `integrity_proof`; s3.integrity)."""

    SERVER_VERIFIED = "server_verified"
    CHECKSUM_COMPARED = "checksum_compared"
    ETAG_COMPARED = "etag_compared"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class PartRecord:
    """A part S3 has acknowledged and the agent has proven (see s3.integrity).

    `crc32c_hex` is the CRC32C of the bytes that were sent, the fast checksum every comparison
    uses; `md5_hex` their MD5, kept only where the proof needs it (Content-MD5, an ETag compared
    with it) and empty otherwise. Parts checkpointed before CRC32C existed have only the MD5.
    """

    number: int
    offset_bytes: int
    size_bytes: int
    etag: str
    md5_hex: str
    uploaded_at: datetime
    crc32c_hex: str = ""
    # Made by the server from a completed object (UploadPartCopy), not sent: no byte of it
    # crossed the network (an extended object's prefix, stream.extension).
    copied: bool = False
    proof: Proof | None = None

    @property
    def end_bytes(self) -> int:
        return self.offset_bytes + self.size_bytes


@dataclass(frozen=True, slots=True)
class Extension:
    """What an extending stream is built from: the completed object at the same key, which the
    file still begins with (stream.extension). The extension replaces that object, and only it:
    `etag` is what HeadObject showed of it when the extension was planned."""

    stream_id: str  # the completed stream whose object is extended
    size_bytes: int  # the completed object's size: the file's unchanged prefix
    etag: str
    count: int = 1  # how many times this key's object has been extended, this time included


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """The checkpointed state of one stream (everything but its parts)."""

    stream_id: str
    path: str  # absolute path of the file
    relative_path: str  # path relative to WATCH_DIR, with forward slashes
    bucket: str
    key: str
    status: Status
    identity: FileIdentity
    part_size_bytes: int  # the base of the part schedule, fixed for the stream's whole life
    part_size_fixed: bool
    started_at: datetime
    last_activity_at: datetime
    upload_id: str | None = None
    size_bytes: int = 0  # file size when last observed
    mtime_ns: int = 0
    uploaded_bytes: int = 0  # sum of the sizes of checkpointed parts
    reuploaded_parts: int = 0
    sha256_hex: str | None = None  # of the whole object, known once verified
    completed_at: datetime | None = None
    end_reason: EndReason = EndReason.IDLE
    error: str | None = None
    host: str = ""  # the host whose agent found the file: only it may call the file lost
    # "CRC32C" when the upload was created with that additional checksum (every part then
    # carries it); empty for uploads created before checksums existed, which never get one.
    checksum_algorithm: str = ""
    # The key S3_KEY_TEMPLATE gave, when another object or stream held it and `key` is a
    # numbered variant of it (s3.placement); empty otherwise.
    key_collision_of: str = ""
    # Part bytes sent for the object so far (re-sent parts included; copied parts, which say
    # so themselves, are not). A crash forgets what was sent since the last save.
    bytes_sent: int = 0
    # The checkpointed intent of a faststart rebuild under way (s3.rebuild_plan.Rebuild as
    # JSON): the stale upload, its parts and how the final object is made. Empty otherwise.
    rebuild: str = ""
    # Set when the stream extends the completed object at `key` (a file that grew again).
    extends: Extension | None = None

    def evolve(self, **changes: object) -> StreamRecord:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CompletedRecord:
    """The compact record kept after a stream's working state is removed.

    It lets the agent recognise a finished file that stays in the folder (same path, identity,
    size and mtime) and never upload it again, and lets `status` show recent completions.
    """

    stream_id: str
    path: str
    bucket: str
    key: str
    status: Status  # COMPLETED or ABORTED_NO_PARTS
    identity: FileIdentity
    size_bytes: int
    mtime_ns: int
    completed_at: datetime
    end_reason: EndReason = EndReason.IDLE
    # What the local-file action (after.lifecycle) proves before it touches the file, fixed when
    # the stream finished; empty / 0 in records written before the action existed.
    ctime_ns: int = 0  # the file's ctime when its record was written (0: unknown)
    sha256_hex: str = ""  # of the verified file, which is the object
    object_etag: str = ""  # the multipart ETag the parts give (empty: some MD5 unknown)
    object_crc32c: str = ""  # the COMPOSITE CRC32C the parts give, base64 without `-N`
    proof: str = ""  # the object's Proof ("" : recorded before proofs were kept)
    host: str = ""  # the host of the agent that finished the stream: only it acts on the file
    # Checkpointed intent of the local-file action under way ("delete" or "move", and the move's
    # target), written before the irreversible step; a crash is finished from it at the next start.
    local_action: str = ""
    local_target: str = ""
    extensions: int = 0  # how many times the object was extended (stream.extension)

    def matches(self, state: FileState) -> bool:
        """True when `state` is the very file this record describes, unchanged."""
        return (
            state.identity == self.identity
            and state.size_bytes == self.size_bytes
            and state.mtime_ns == self.mtime_ns
        )


@dataclass(frozen=True, slots=True)
class StreamView:
    """What the operator's faces see of one live stream, copied on the agent's event loop."""

    record: StreamRecord
    parts: int
    stalled: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """The narrow view of a running agent that the report, the board and the demo read.

    The agent hands out copies, so the operator's faces never reach into its workers, and
    `ops` never imports the agent class.
    """

    agent_id: str
    store_name: str
    watch_dir: str
    streams: tuple[StreamView, ...]
    integrity: dict[str, object] | None = None  # what the S3 endpoint proves (s3.integrity)
    disk: dict[str, object] | None = None  # WATCH_DIR's free space and the local files' state
    bandwidth: dict[str, object] | None = None  # BANDWIDTH_LIMIT now and its next change


@dataclass(frozen=True, slots=True)
class ReadMark:
    """When a part's bytes were read, on both clocks: the wall clock is the one the kernel
    stamps a file's ctime with, the monotonic one shows whether the wall clock jumped since."""

    wall_ns: int
    mono_ns: int


# -- events after a stream ends (built by `after.events`, kept in the checkpoint store's outbox) --


class DeliveryStatus(StrEnum):
    """Where an event stands with one sink (the webhook, the command hook). Persisted."""

    RETRYING = "retrying"  # tried and failed; tried again after a backoff
    DELIVERED = "delivered"  # the sink took it (a 2xx answer, exit status 0)
    UNDELIVERABLE = "undeliverable"  # refused too often (4xx): kept, shown, retried at next start


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event in the outbox: written with the stream's finish, removed once delivered.

    `body` is the event JSON exactly as it is sent, fixed when the event is written, so a
    delivery after a restart sends the same bytes under the same id.
    """

    event_id: str
    event_type: str  # text, not an enum: an event type added later still reads back
    stream_id: str
    host: str  # the host whose agent delivers it (the one that finished the stream)
    created_at: datetime
    body: str


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """One sink's progress with one event."""

    status: DeliveryStatus
    attempts: int
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event waiting in the outbox, and each sink's progress with it (sinks not yet tried
    are absent). `seq` is the order events were written in; per stream they go out in it."""

    seq: int
    event: OutboxEvent
    deliveries: dict[str, DeliveryState] = dataclasses.field(default_factory=dict)
