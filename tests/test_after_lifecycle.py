"""The pure decisions of the local-file action, as tables; and its settings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamup.after.lifecycle import (
    Action,
    Keep,
    Local,
    Remote,
    Resume,
    carried_out,
    due,
    host_may_act,
    local_verdict,
    move_target,
    oldest_first,
    partial_path,
    remote_verdict,
    resume_intent,
    resumed_trigger,
)
from streamup.after.local_action import Policy
from streamup.errors import ConfigError
from streamup.models import CompletedRecord, EndReason, FileIdentity, FileState, Status
from streamup.settings import load_settings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ID = FileIdentity(2049, 77)
RECORD = CompletedRecord(
    stream_id="5b0c0000-aaaa", path="/watch/cam/a.mp4", bucket="b", key="streams/5b0c/cam/a.mp4",
    status=Status.COMPLETED, identity=ID, size_bytes=1000, mtime_ns=5, completed_at=T0,
    ctime_ns=9, sha256_hex="ab" * 32, object_etag='"00ff-2"', object_crc32c="AAAAAA==",
    proof="etag_compared", host="edge-a",
)  # fmt: skip
SAME = Local(FileState(ID, 1000, 5), ctime_ns=9)


def verdict(record: CompletedRecord = RECORD, local: Local = SAME, **kw: bool) -> Keep | None:
    args = {"accept_unproven": False, "busy": False, "host_ok": True} | kw
    return local_verdict(record, local, **args)


@pytest.mark.parametrize(
    ("record", "local", "flags", "expected"),
    [
        (RECORD, SAME, {}, None),
        (dataclasses.replace(RECORD, status=Status.ABORTED_NO_PARTS), SAME, {}, Keep.NOT_FINISHED),
        (dataclasses.replace(RECORD, end_reason=EndReason.FILE_LOST), SAME, {}, Keep.NOT_FINISHED),
        (RECORD, SAME, {"busy": True}, Keep.STREAM_ACTIVE),
        (RECORD, SAME, {"host_ok": False}, Keep.OTHER_HOST),
        (dataclasses.replace(RECORD, proof=""), SAME, {}, Keep.UNPROVEN),  # an older record
        (dataclasses.replace(RECORD, proof="unverified"), SAME, {}, Keep.UNPROVEN),
        (dataclasses.replace(RECORD, proof="unverified"), SAME, {"accept_unproven": True}, None),
        (RECORD, Local(None, symlink=True), {}, Keep.SYMLINK),
        (RECORD, Local(FileState(FileIdentity(2049, 78), 1000, 5), 9), {}, Keep.FILE_CHANGED),
        (RECORD, Local(FileState(ID, 1001, 5), 9), {}, Keep.FILE_CHANGED),
        (RECORD, Local(FileState(ID, 1000, 6), 9), {}, Keep.FILE_CHANGED),
        (RECORD, Local(FileState(ID, 1000, 5), 10), {}, Keep.FILE_CHANGED),  # mtime put back
        (RECORD, Local(FileState(ID, 1000, 5), 10), {"check_ctime": False}, None),
        (dataclasses.replace(RECORD, ctime_ns=0), Local(FileState(ID, 1000, 5), 10), {}, None),
        (RECORD, dataclasses.replace(SAME, writer=True), {}, Keep.OPEN_FOR_WRITING),
        (RECORD, dataclasses.replace(SAME, writer=None), {}, Keep.WRITERS_UNKNOWN),
    ],
)
def test_local_verdict(
    record: CompletedRecord, local: Local, flags: dict[str, bool], expected: Keep | None
) -> None:
    assert verdict(record, local, **flags) is expected


OBJECT = Remote(1000, '"00FF-2"', "AAAAAA==")


@pytest.mark.parametrize(
    ("remote", "metadata", "accept", "expected"),
    [
        (OBJECT, True, False, None),
        (None, True, False, Keep.OBJECT_MISSING),
        (dataclasses.replace(OBJECT, size_bytes=999), True, False, Keep.OBJECT_MISMATCH),
        (dataclasses.replace(OBJECT, crc32c="BBBBBB=="), True, False, Keep.OBJECT_MISMATCH),
        (dataclasses.replace(OBJECT, etag='"11ff-2"'), True, False, Keep.OBJECT_MISMATCH),
        (dataclasses.replace(OBJECT, crc32c=None), True, False, None),  # the ETag proves it
        (Remote(1000, '"d41d8cd9"', None), True, False, Keep.UNPROVEN),  # nothing comparable
        (Remote(1000, '"d41d8cd9"', None), True, True, None),
        (OBJECT, False, False, Keep.METADATA_MISSING),
    ],
)
def test_remote_verdict(
    remote: Remote | None, metadata: bool, accept: bool, expected: Keep | None
) -> None:
    found = remote_verdict(RECORD, remote, metadata_exists=metadata, accept_unproven=accept)
    assert (None if found is None else found[0]) is expected


def test_due_after_keep_local_seconds() -> None:
    assert not due(RECORD, 5, T0 + timedelta(seconds=4.9))
    assert due(RECORD, 5, T0 + timedelta(seconds=5))
    assert due(RECORD, 0, T0)


def test_move_target_keeps_the_relative_path_and_refuses_outsiders() -> None:
    assert move_target("/watch/cam/a.mp4", "/watch", "/done") == "/done/cam/a.mp4"
    assert move_target("/elsewhere/a.mp4", "/watch", "/done") is None
    assert partial_path("/done/cam/a.mp4", RECORD.stream_id) == (
        "/done/cam/.a.mp4.streamup-5b0c0000.partial"
    )


def test_oldest_recording_first() -> None:
    young = dataclasses.replace(RECORD, path="/watch/b.mp4", mtime_ns=9)
    old = dataclasses.replace(RECORD, path="/watch/c.mp4", mtime_ns=1)
    assert [r.path for r in oldest_first([young, RECORD, old])] == [
        "/watch/c.mp4", "/watch/cam/a.mp4", "/watch/b.mp4"
    ]  # fmt: skip


MOVE = dataclasses.replace(RECORD, local_action="move", local_target="/done/cam/a.mp4")
COPY = FileState(FileIdentity(40, 3), 1000, 5)


@pytest.mark.parametrize(
    ("record", "source", "target", "is_copy", "expected"),
    [
        (dataclasses.replace(RECORD, local_action="delete"), SAME.state, None, False, Resume.REDO),
        (dataclasses.replace(RECORD, local_action="delete"), None, None, False, Resume.DONE),
        # another file took the path since: it is not ours to touch
        (MOVE, FileState(FileIdentity(2049, 90), 5, 5), None, False, Resume.DONE),
        (MOVE, SAME.state, None, False, Resume.REDO),
        (MOVE, SAME.state, SAME.state, False, Resume.UNLINK_SOURCE),  # the hard link was made
        (MOVE, SAME.state, COPY, True, Resume.UNLINK_SOURCE),  # the copy is whole
        (MOVE, SAME.state, COPY, False, Resume.CONFLICT),
        (MOVE, None, COPY, True, Resume.DONE),
    ],
)
def test_resume_intent(
    record: CompletedRecord,
    source: FileState | None,
    target: FileState | None,
    is_copy: bool,
    expected: Resume,
) -> None:
    assert resume_intent(record, source, target, target_is_copy=is_copy) is expected


@pytest.mark.parametrize(
    ("record_host", "shared", "expected"),
    [
        ("edge-a", False, True),  # alone on its store: every file is this agent's
        ("edge-b", False, True),
        ("edge-a", True, True),
        ("edge-b", True, False),  # another host finished it: that one acts
        ("", True, True),  # a record that names no host
    ],
)
def test_host_may_act(record_host: str, shared: bool, expected: bool) -> None:
    record = dataclasses.replace(RECORD, host=record_host)
    assert host_may_act(record, shared=shared, host="edge-a") is expected


DELETE = dataclasses.replace(RECORD, local_action="delete")
OTHER = FileState(FileIdentity(2049, 90), 5, 5)  # another file at the path


@pytest.mark.parametrize(
    ("record", "source", "target", "expected"),
    [
        (DELETE, None, None, True),  # unlinked
        (DELETE, OTHER, None, True),  # unlinked; a new file took the path since
        (DELETE, SAME.state, None, False),  # still there
        (DELETE, FileState(ID, 2000, 8), None, False),  # still there, written since
        (MOVE, None, SAME.state, True),  # the link is at the target, the source gone
        (MOVE, None, COPY, True),  # the copy is at the target, the source gone
        (MOVE, None, None, False),  # nothing at the target: it went elsewhere, not by us
        (MOVE, SAME.state, SAME.state, False),  # linked, not yet unlinked
    ],
)
def test_carried_out(
    record: CompletedRecord,
    source: FileState | None,
    target: FileState | None,
    expected: bool,
) -> None:
    assert carried_out(record, source, target) is expected


@pytest.mark.parametrize(
    ("local_action", "after_upload", "expected"),
    [
        ("delete", Action.DELETE, "after_upload"),
        ("delete", Action.KEEP, "min_free"),  # only the free-space guard deletes under keep
        ("delete", Action.MOVE, "min_free"),
        ("move", Action.MOVE, "after_upload"),
        ("move", Action.KEEP, "after_upload"),  # AFTER_UPLOAD changed across the restart
    ],
)
def test_resumed_trigger(local_action: str, after_upload: Action, expected: str) -> None:
    record = dataclasses.replace(RECORD, local_action=local_action)
    assert resumed_trigger(record, after_upload) == expected


# ---------------------------------------------------------------------- settings


def settings_error(tmp_path: Path, **values: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings({"watch_dir": str(tmp_path / "watch"), **values})
    return str(caught.value)


def test_move_needs_a_folder_outside_watch_dir_or_hidden_in_it(tmp_path: Path) -> None:
    assert "AFTER_UPLOAD_DIR" in settings_error(tmp_path, after_upload="move")
    inside = settings_error(
        tmp_path, after_upload="move", after_upload_dir=str(tmp_path / "watch" / "done")
    )
    assert inside.startswith("AFTER_UPLOAD_DIR=") and "inside WATCH_DIR" in inside
    same = settings_error(tmp_path, after_upload="move", after_upload_dir=str(tmp_path / "watch"))
    assert "inside WATCH_DIR" in same
    hidden = tmp_path / "watch" / ".done"
    settings = load_settings({"watch_dir": str(tmp_path / "watch"), "after_upload": "move",
                              "after_upload_dir": str(hidden)})  # fmt: skip
    assert settings.after_upload_dir == hidden and hidden.is_dir()


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"after_upload": "remove"}, "AFTER_UPLOAD="),
        ({"min_free_bytes": "lots"}, "MIN_FREE_BYTES="),
        ({"min_free_bytes": "100%"}, "MIN_FREE_BYTES="),
        ({"min_free_bytes": "-1"}, "MIN_FREE_BYTES="),
        ({"keep_local_seconds": "-3"}, "KEEP_LOCAL_SECONDS="),
        ({"after_upload_unproven": "yes"}, "AFTER_UPLOAD_UNPROVEN="),
    ],
)
def test_bad_values_name_their_setting(tmp_path: Path, values: dict[str, str], name: str) -> None:
    assert settings_error(tmp_path, **values).startswith(name)


def test_min_free_bytes_in_bytes_or_percent(tmp_path: Path) -> None:
    base = {"watch_dir": str(tmp_path / "watch")}
    assert load_settings(base).min_free_floor(1000) == 0
    assert load_settings(base | {"min_free_bytes": "250"}).min_free_floor(1000) == 250
    assert load_settings(base | {"min_free_bytes": "5%"}).min_free_floor(2000) == 100
    assert load_settings(base | {"min_free_bytes": "12.5%"}).min_free_floor(1000) == 125


def test_a_bad_after_upload_setting_stops_run_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"WATCH_DIR": str(tmp_path / "watch"), "AFTER_UPLOAD": "move", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "streamup", "run"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamup: error: AFTER_UPLOAD=move needs")


def test_policy_of_the_settings(tmp_path: Path) -> None:
    watch, done = tmp_path / "watch", tmp_path / "done"
    settings = load_settings({"watch_dir": str(watch), "after_upload": "move",
                              "after_upload_dir": str(done), "keep_local_seconds": "30",
                              "after_upload_unproven": "accept"})  # fmt: skip
    policy = Policy.of(settings, host="edge-a")
    assert (policy.action, policy.watch_dir, policy.target_dir) == (
        Action.MOVE, str(watch), str(done)
    )  # fmt: skip
    assert (policy.keep_local_s, policy.accept_unproven, policy.shared) == (30.0, True, False)
    assert (policy.host, policy.agent_id) == ("edge-a", settings.agent_id)
    kept = Policy.of(load_settings({"watch_dir": str(watch)}), host="edge-a")
    assert (kept.action, kept.target_dir, kept.accept_unproven) == (Action.KEEP, None, False)
