"""One exception hierarchy. Library errors are translated once, at the boundary that meets them.

Every error carries a `retryable` flag; the retry loop looks at that flag, never at library types,
so a transient network blip is retried however deep it was raised.
"""

from __future__ import annotations


class StreamupError(Exception):
    """Root of every error streamup raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(StreamupError):
    """A bad setting: the message names the setting and how to fix it."""


class StorageError(StreamupError):
    """An S3 request failed. `code` is S3's error code when there was one."""

    def __init__(
        self, message: str, *, code: str = "", retryable: bool = False, happened: str = ""
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code
        # What the server did, in words: "answered 503 SlowDown", "refused the connection".
        self.happened = happened


class NoSuchUpload(StorageError):
    """S3 no longer knows the multipart upload (aborted, expired, storage wiped)."""


class CheckpointError(StreamupError):
    """The checkpoint store failed. Connection problems are retryable."""


class LeaseLost(CheckpointError):
    """Another agent owns the stream now: this one must stop touching it (never retried)."""


class CheckpointCorrupt(CheckpointError):
    """A stored value cannot be parsed. Reported with the key and value, never dropped silently."""


class SourceChanged(StreamupError):
    """The local file changed under a step that needed it stable (e.g. while verifying)."""

    retryable = True
