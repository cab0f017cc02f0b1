"""The completed files the local-file action keeps, and why: each reason logged (`file.kept`)
and counted (LOCAL_FILES_KEPT) once per file and reason, the counts by reason right now
(LOCAL_FILES_WAITING), the list /status shows, and when each file is looked at again.
"""

from __future__ import annotations

import time

import structlog

from streamup import metrics
from streamup.after.lifecycle import Keep
from streamup.models import CompletedRecord

log = structlog.get_logger("streamup")

RECHECK_S = 10.0  # a file kept for a reason is looked at again after this long
_SHOWN_KEPT = 50  # files listed in /status as kept (the counts cover all)

for _reason in Keep:
    metrics.LOCAL_FILES_KEPT.labels(reason=_reason.value)
    metrics.LOCAL_FILES_WAITING.labels(reason=_reason.value)


class KeptFiles:
    """The files kept for a reason (path -> stream id, reason, detail) and their rest."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[str, Keep, str]] = {}  # path -> (stream id, reason, detail)
        self._rest_until: dict[str, float] = {}  # path -> monotonic time of the next look

    def keep(self, record: CompletedRecord, reason: Keep, detail: str = "") -> None:
        """The file stays: logged and counted once per file and reason; looked at again later."""
        self._rest_until[record.path] = time.monotonic() + RECHECK_S
        seen = self._kept.get(record.path)
        self._kept[record.path] = (record.stream_id, reason, detail)
        if seen is not None and seen[:2] == (record.stream_id, reason):
            return
        metrics.LOCAL_FILES_KEPT.labels(reason=reason.value).inc()
        log.info(
            "file.kept",
            stream_id=record.stream_id,
            path=record.path,
            reason=reason.value,
            detail=detail or None,
        )

    def resting(self, path: str) -> bool:
        """Kept a moment ago: not looked at again before RECHECK_S."""
        return time.monotonic() < self._rest_until.get(path, 0.0)

    def forget(self, path: str) -> None:
        """The path's record is gone: nothing is kept there any more."""
        self._kept.pop(path, None)
        self._rest_until.pop(path, None)

    def count(self) -> None:
        """LOCAL_FILES_WAITING by reason, as it is now."""
        counts = dict.fromkeys(Keep, 0)
        for _, reason, _ in self._kept.values():
            counts[reason] += 1
        for reason, count in counts.items():
            metrics.LOCAL_FILES_WAITING.labels(reason=reason.value).set(count)

    def view(self) -> list[dict[str, object]]:
        """The `files_kept` list of /status (the first ones by path)."""
        kept = sorted(self._kept.items())[:_SHOWN_KEPT]
        return [
            {"path": path, "stream_id": sid, "reason": reason.value, "detail": detail or None}
            for path, (sid, reason, detail) in kept
        ]
