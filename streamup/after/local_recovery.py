"""What a crash interrupted in the local-file action, finished at the next start: every
completed record that still holds an intent (step 4 of `after.local_action`) is looked at
against the file and the move's target as they are now (`after.lifecycle.resume_intent`
decides): the step happened (its record and event are written now, once, under the event's
stable id), the file went elsewhere, the action is to run again with every check, the target
is another file, or only the unlink of a verified copy's source is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

import structlog

from streamup.after.lifecycle import (
    Keep,
    Local,
    Resume,
    carried_out,
    partial_path,
    resume_intent,
    resumed_trigger,
)
from streamup.after.local_action import LocalAction
from streamup.errors import StreamupError
from streamup.files.relocate import regular_state, sha256_of, unlink_durably
from streamup.models import CompletedRecord, FileState

log = structlog.get_logger("streamup")


async def recover(action: LocalAction) -> None:
    """Finish what a crash interrupted: every record that still holds an intent."""
    for path, record in list(action.records().items()):
        if record.local_action:
            try:
                await _resume(action, path, record)
            except StreamupError as exc:
                log.warning("local.recovery_failed", path=path, error=str(exc))


async def _resume(action: LocalAction, path: str, record: CompletedRecord) -> None:
    source = await action.observe(path)
    target = record.local_target
    target_state = regular_state(target) if target else None
    is_copy = False
    if (
        source.state is not None
        and target_state is not None
        and target_state.identity != source.state.identity
    ):
        is_copy = await asyncio.to_thread(sha256_of, target) == record.sha256_hex
    outcome = resume_intent(record, source.state, target_state, target_is_copy=is_copy)
    log.info("file.action_resumed", stream_id=record.stream_id, path=path,
             action=record.local_action, outcome=outcome.value)  # fmt: skip
    if target:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial_path(target, record.stream_id))
    await _settle(action, path, record, outcome, source, target_state)


async def _settle(
    action: LocalAction,
    path: str,
    record: CompletedRecord,
    outcome: Resume,
    source: Local,
    target_state: FileState | None,
) -> None:
    if outcome is Resume.DONE and carried_out(record, source.state, target_state):
        # The crash came after the step, before its record and event were written.
        await action.done(record, resumed_trigger(record, action.policy.action))
    elif outcome is Resume.DONE:  # the file is still there, changed, or went elsewhere
        await action.forget(record)
    elif outcome is Resume.REDO:
        await action.clear(record)
        action.records()[path] = dataclasses.replace(record, local_action="", local_target="")
    elif outcome is Resume.CONFLICT:
        await action.clear(record)
        action.kept.keep(record, Keep.TARGET_EXISTS, f"{record.local_target} holds another file")
    else:  # the copy is whole at the target: only the unlink of the source is left
        await _unlink_source(action, path, record, source)


async def _unlink_source(
    action: LocalAction, path: str, record: CompletedRecord, source: Local
) -> None:
    reason = action.local_reason(record, source, check_ctime=False)
    if reason is not None:
        action.kept.keep(record, reason)
        return
    try:
        await asyncio.to_thread(unlink_durably, path)
    except OSError as exc:
        action.kept.keep(record, Keep.ACTION_FAILED, str(exc))
        return
    await action.done(record, "after_upload")
