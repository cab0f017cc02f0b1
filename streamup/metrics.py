"""Every Prometheus metric in one place; every room may import it (the HTTP server is ops.http).

No metric carries a per-stream label: a label per recording would grow without bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamup.models import Status

REGISTRY = CollectorRegistry(auto_describe=True)

BYTES_UPLOADED = Counter(
    "streamup_bytes_uploaded", "Bytes acknowledged by S3 in parts", registry=REGISTRY
)
PARTS_UPLOADED = Counter("streamup_parts_uploaded", "Parts acknowledged by S3", registry=REGISTRY)
BYTES_COPIED = Counter(
    "streamup_bytes_copied",
    "Bytes of parts the server copied from an object it held (UploadPartCopy), not sent",
    registry=REGISTRY,
)
PARTS_REUPLOADED = Counter(
    "streamup_parts_reuploaded",
    "Parts sent again because the writer changed their bytes after they were uploaded",
    registry=REGISTRY,
)
PARTS_PROOF_FAILED = Counter(
    "streamup_parts_proof_failed",
    "Parts sent again because the server did not hold exactly their bytes (refused or ETag)",
    registry=REGISTRY,
)
PART_SECONDS = Histogram(
    "streamup_part_upload_seconds",
    "Time to upload one part, retries included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
RETRIES = Counter(
    "streamup_retries", "Transient errors that were retried", ["kind"], registry=REGISTRY
)
COMPLETIONS = Counter(
    "streamup_streams_completed", "Streams completed with their metadata", registry=REGISTRY
)
FILES_RECOGNISED = Counter(
    "streamup_files_recognised",
    "Finished files found in S3 without a record, recorded and not uploaded again",
    registry=REGISTRY,
)
FAILURES = Counter(
    "streamup_stream_failures",
    "Stream steps that failed permanently",
    ["status"],
    registry=REGISTRY,
)
STREAMS_ACTIVE = Gauge("streamup_streams_active", "Streams being uploaded", registry=REGISTRY)
STREAMS_STALLED = Gauge(
    "streamup_streams_stalled", "Streams waiting on S3 or the checkpoint store", registry=REGISTRY
)
UPLOAD_LAG = Gauge(
    "streamup_upload_lag_bytes", "Bytes on disk not yet acknowledged by S3", registry=REGISTRY
)
BANDWIDTH_LIMIT = Gauge(
    "streamup_bandwidth_limit_bytes_per_second",
    "BANDWIDTH_LIMIT in force now, all part uploads together (0: no limit)",
    registry=REGISTRY,
)

# Events after completion (after.delivery). `sink` is "webhook" or "command".
EVENTS_DELIVERED = Counter(
    "streamup_events_delivered", "Events a sink took (2xx, exit status 0)", ["sink"],
    registry=REGISTRY,
)  # fmt: skip
EVENT_RETRIES = Counter(
    "streamup_event_retries", "Delivery attempts that failed and will be retried", ["sink"],
    registry=REGISTRY,
)  # fmt: skip
EVENTS_UNDELIVERABLE = Counter(
    "streamup_events_undeliverable",
    "Events a sink refused too often (4xx): kept in the outbox and shown in status",
    ["sink"],
    registry=REGISTRY,
)
EVENTS_WAITING = Gauge(
    "streamup_events_waiting", "Events in the outbox this agent has still to deliver",
    registry=REGISTRY,
)  # fmt: skip
EVENT_SINKS = ("webhook", "command")

# Labelled series appear only once touched; a series that is born at its first failure makes
# `rate()` and `increase()` miss that failure. So every known label value starts at zero.
# `kind` is the class name of the retried error (see StreamWorker._on_retry).
RETRY_KINDS = ("StorageError", "NoSuchUpload", "CheckpointError", "SourceChanged")
for _kind in RETRY_KINDS:
    RETRIES.labels(kind=_kind)
for _status in Status:
    if _status.is_failed:
        FAILURES.labels(status=_status.value)
for _sink in EVENT_SINKS:
    for _counter in (EVENTS_DELIVERED, EVENT_RETRIES, EVENTS_UNDELIVERABLE):
        _counter.labels(sink=_sink)

# The local-file action and the free-space guard (after.local_action). `trigger` is
# after_upload (AFTER_UPLOAD) or min_free (MIN_FREE_BYTES); `reason` is after.lifecycle.Keep.
LOCAL_FILES_DELETED = Counter(
    "streamup_local_files_deleted",
    "Local files deleted once S3 provably held them",
    ["trigger"],
    registry=REGISTRY,
)
LOCAL_FILES_MOVED = Counter(
    "streamup_local_files_moved",
    "Local files moved to AFTER_UPLOAD_DIR once S3 provably held them",
    registry=REGISTRY,
)
LOCAL_BYTES_FREED = Counter(
    "streamup_local_bytes_freed",
    "Bytes of WATCH_DIR's filesystem freed by deleting or moving uploaded files",
    registry=REGISTRY,
)
LOCAL_FILES_KEPT = Counter(
    "streamup_local_files_kept",
    "Files the action left in place, counted once per file and reason",
    ["reason"],
    registry=REGISTRY,
)
LOCAL_FILES_WAITING = Gauge(
    "streamup_local_files_kept_now",
    "Completed files the action is leaving in place right now, by reason",
    ["reason"],
    registry=REGISTRY,
)
DISK_FREE = Gauge(
    "streamup_disk_free_bytes", "Free bytes on WATCH_DIR's filesystem", registry=REGISTRY
)
DISK_SHORT = Gauge(
    "streamup_disk_short",
    "1 while WATCH_DIR's filesystem is below MIN_FREE_BYTES and nothing more can be deleted",
    registry=REGISTRY,
)
for _trigger in ("after_upload", "min_free"):
    LOCAL_FILES_DELETED.labels(trigger=_trigger)
