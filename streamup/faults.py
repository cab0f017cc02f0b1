"""Deterministic crash points, for the tests that prove a crash at any instant loses nothing.

`STREAMUP_CRASH_AT=after_part_upload:3` makes the process die (no clean-up, like SIGKILL) the
third time it reaches that point. Unset, as in production, each point costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

POINTS = (
    "after_part_upload",
    # the end-of-stream check is done and the writer's close not yet confirmed (stream.ending)
    "before_end_confirmed",
    "before_complete",
    # a faststart rebuild (stream.rebuild): its intent is checkpointed, the stale upload not yet
    # completed; completed as the temporary object; a part copied, not yet checkpointed
    "before_stale_complete",
    "after_stale_complete",
    "after_part_copy",
    "after_complete",
    "after_mismatch_delete",  # a completed object unlike its parts is deleted; no restart yet
    "before_metadata",
    "before_finish",  # the metadata is in S3, the stream is not finished (nor its event written)
    "before_event_delivery",  # an event is in the outbox, no sink has been tried
    "after_event_delivery",  # a sink took the event, the outbox does not know yet
    # the local-file action: intent checkpointed, file not yet touched; a move's copy landed
    "before_local_delete",
    "before_local_move",
    "after_local_copy",
    "after_local_unlink",  # the file is gone from WATCH_DIR; its record and event not yet written
    # an extension (a completed file that grew; its copied parts pass after_part_copy too): the
    # completed object about to be replaced by its longer self; replaced, not checkpointed
    "before_replace",
    "after_replace",
    # a checkpoint store that lost a stream (stream.forgotten): its record written back, its
    # parts not yet
    "after_restored_record",
    # a finished file recognised in S3 without a record (stream.recognition): read and found
    # equal to the object, its completed record not yet written
    "before_recognised_record",
    # an upload in progress the lost store held, found for a recording (stream.adoption); its
    # stream not yet claimed in the store
    "before_lost_upload_claimed",
)


def _armed() -> dict[str, int]:
    spec = os.environ.get("STREAMUP_CRASH_AT", "")
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"STREAMUP_CRASH_AT names an unknown point {name!r}; use {POINTS}")
        armed[name] = int(nth or 1)
    return armed


_ARMED = _armed()
_SEEN: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here when the environment armed this point (and this is its n-th visit)."""
    if name not in _ARMED:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _ARMED[name]:
        sys.stderr.write(f'{{"event": "test.crash", "point": "{name}"}}\n')
        sys.stderr.flush()
        os._exit(137)
