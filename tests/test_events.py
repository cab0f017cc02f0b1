"""Pure parts of events: the documents and ids, what an answer means, the retry schedule, what
goes next, the signature, the hook's environment and the settings. Plain tables, no I/O."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamup.after.events import (
    EventType,
    completed_document,
    encode_event,
    event_id,
    file_document,
    file_event,
    stream_event,
)
from streamup.after.hooks import BASE_ENV, hook_env
from streamup.after.schedule import (
    Attempt,
    Outcome,
    Pending,
    RetryPolicy,
    classify_status,
    parse_retry_after,
    pick_ready,
)
from streamup.after.webhook import request_headers, signature
from streamup.errors import ConfigError
from streamup.models import (
    CompletedRecord,
    EndReason,
    FileIdentity,
    OutboxEvent,
    Status,
    StreamRecord,
)
from streamup.settings import load_settings

T0 = datetime(2026, 11, 24, 8, 30, 0, 250000, tzinfo=UTC)


def stream(status: Status = Status.COMPLETED, **changes: Any) -> StreamRecord:
    record = StreamRecord(
        stream_id="5b0c1f3e-0000-4000-8000-000000000001",
        path="/data/watch/cam1/a.mp4",
        relative_path="cam1/a.mp4",
        bucket="video-streams",
        key="streams/5b0c1f3e-0000-4000-8000-000000000001/cam1/a.mp4",
        status=status,
        identity=FileIdentity(1, 2),
        part_size_bytes=5 * 1024 * 1024,
        part_size_fixed=False,
        started_at=T0,
        last_activity_at=T0,
        size_bytes=123,
        sha256_hex="ab" * 32,
    )
    return record.evolve(**changes)


METADATA = {
    "stream_id": stream().stream_id,
    "original_file_path": "/data/watch/cam1/a.mp4",
    "total_size_bytes": 123,
    "duration_seconds": 600.04,
    "sha256": "ab" * 32,
    "chunks": [{"part_number": 1, "size_bytes": 123}],
}

# -- documents and ids --------------------------------------------------------------------------


def test_an_event_id_is_stable_per_stream_and_type_and_differs_otherwise() -> None:
    first = event_id(EventType.STREAM_COMPLETED, "s1")
    assert first == event_id(EventType.STREAM_COMPLETED, "s1")  # rebuilt after a crash
    assert uuid.UUID(first).version == 5
    others = {event_id(EventType.STREAM_FAILED, "s1"), event_id(EventType.STREAM_COMPLETED, "s2")}
    assert first not in others and len(others) == 2


def test_completed_event_has_the_fixed_shape_and_the_metadatas_numbers() -> None:
    doc = completed_document(stream(size_bytes=999), METADATA, created_at=T0)
    assert list(doc) == [
        "id", "type", "created_at", "stream_id", "bucket", "key", "metadata_key", "size_bytes",
        "sha256", "duration_seconds", "metadata",
    ]  # fmt: skip
    assert doc["id"] == event_id(EventType.STREAM_COMPLETED, stream().stream_id)
    assert doc["type"] == "stream.completed"
    assert doc["created_at"] == "2026-11-24T08:30:00.250000+00:00"
    assert doc["metadata_key"] == stream().key + ".metadata.json"
    # From the metadata document, not the record: the event never disagrees with the object.
    assert (doc["size_bytes"], doc["sha256"], doc["duration_seconds"]) == (123, "ab" * 32, 600.04)
    assert doc["metadata"] == METADATA


def test_failed_event_tells_a_stream_that_ended_without_an_object() -> None:
    aborted = stream(Status.ABORTED_NO_PARTS, end_reason=EndReason.FILE_LOST, sha256_hex=None)
    event = stream_event(aborted, None, host="edge-1", created_at=T0)
    assert event is not None and event.event_type == "stream.failed"
    doc = json.loads(event.body)
    assert doc["id"] == event.event_id == event_id(EventType.STREAM_FAILED, aborted.stream_id)
    assert (doc["metadata"], doc["metadata_key"], doc["sha256"], doc["size_bytes"]) == (
        None, None, None, 0,
    )  # fmt: skip
    assert (doc["status"], doc["end_reason"]) == ("aborted_no_parts", "file_lost")
    assert "no object was stored" in doc["error"]


@pytest.mark.parametrize("status", [s for s in Status if s not in (Status.ABORTED_NO_PARTS,)])
def test_only_a_completion_with_metadata_or_an_abort_makes_an_event(status: Status) -> None:
    made = stream_event(stream(status), None, host="h", created_at=T0)
    assert made is None  # no metadata: even a completed stream has nothing to tell yet
    with_metadata = stream_event(stream(status), METADATA, host="h", created_at=T0)
    assert (with_metadata is not None) == (status is Status.COMPLETED)


def test_the_body_is_ascii_json_even_for_a_file_name_that_is_not_utf8() -> None:
    odd = dict(METADATA, original_file_path="/data/watch/caf\udce9 é.mp4")
    event = stream_event(stream(), odd, host="edge-1", created_at=T0)
    assert event is not None and event.host == "edge-1" and event.created_at == T0
    assert event.body.isascii()
    assert json.loads(event.body)["metadata"]["original_file_path"] == odd["original_file_path"]
    assert encode_event({"a": 1, "b": [1.5, None]}) == '{"a":1,"b":[1.5,null]}'
    with pytest.raises(ValueError):
        encode_event({"duration_seconds": float("nan")})  # not JSON


def done_file(action: str, **changes: Any) -> CompletedRecord:
    """A completed record holding the local-file action's intent, as `_done` gets it."""
    record = CompletedRecord(
        stream_id=stream().stream_id,
        path="/data/watch/cam1/a.mp4",
        bucket="video-streams",
        key=stream().key,
        status=Status.COMPLETED,
        identity=FileIdentity(1, 2),
        size_bytes=123,
        mtime_ns=5,
        completed_at=T0,
        sha256_hex="ab" * 32,
        local_action=action,
        local_target="/data/done/cam1/a.mp4" if action == "move" else "",
    )
    return dataclasses.replace(record, **changes)


def test_file_deleted_event_has_the_fixed_shape_and_the_local_path() -> None:
    event = file_event(done_file("delete"), host="edge-1", created_at=T0)
    doc = json.loads(event.body)
    assert list(doc) == [
        "id", "type", "created_at", "stream_id", "bucket", "key", "metadata_key", "size_bytes",
        "sha256", "duration_seconds", "metadata", "path",
    ]  # fmt: skip
    assert doc["type"] == event.event_type == "file.deleted"
    assert doc["id"] == event.event_id == event_id(EventType.FILE_DELETED, stream().stream_id)
    assert (event.stream_id, event.host, event.created_at) == (stream().stream_id, "edge-1", T0)
    assert doc["metadata_key"] == stream().key + ".metadata.json"
    assert (doc["size_bytes"], doc["sha256"], doc["path"]) == (
        123,
        "ab" * 32,
        "/data/watch/cam1/a.mp4",
    )
    # The completed record holds no metadata: the metadata object (metadata_key) does.
    assert (doc["duration_seconds"], doc["metadata"]) == (None, None)


def test_file_moved_event_adds_moved_to_and_has_an_id_of_its_own() -> None:
    doc = file_document(done_file("move"), created_at=T0)
    assert doc["type"] == "file.moved"
    assert (doc["path"], doc["moved_to"]) == ("/data/watch/cam1/a.mp4", "/data/done/cam1/a.mp4")
    assert doc["id"] == event_id(EventType.FILE_MOVED, stream().stream_id)
    ids = {doc["id"], event_id(EventType.FILE_DELETED, stream().stream_id),
           event_id(EventType.STREAM_COMPLETED, stream().stream_id)}  # fmt: skip
    assert len(ids) == 3  # one stream's events never share an id
    # Built again (the crash-resumed action): the same id, whatever the clock says.
    again = file_document(done_file("move"), created_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert again["id"] == doc["id"]


def test_a_file_event_of_a_name_that_is_not_utf8_is_ascii_json() -> None:
    odd = "/data/watch/caf\udce9 é.mp4"
    event = file_event(done_file("delete", path=odd, sha256_hex=""), host="h", created_at=T0)
    assert event.body.isascii()
    doc = json.loads(event.body)
    assert doc["path"] == odd and doc["sha256"] is None


# -- what an answer means, when to try again ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        *[(code, Outcome.DELIVERED) for code in (200, 201, 202, 204, 299)],
        *[(code, Outcome.TRANSIENT) for code in (408, 429, 500, 502, 503, 504, 599)],
        *[(code, Outcome.REJECTED) for code in (301, 302, 307, 400, 401, 403, 404, 410, 422)],
    ],
)
def test_http_answers_are_delivered_transient_or_rejected(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 120 ", 120.0), ("0", 0.0), (None, None), ("", None), ("-1", None),
     ("1.5", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_is_read_in_seconds_only(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize(
    ("outcome", "tries", "rejections", "retry_after", "low", "high"),
    [
        (Outcome.TRANSIENT, 1, 0, None, 0.5, 1.0),
        (Outcome.TRANSIENT, 2, 0, None, 1.0, 2.0),
        (Outcome.TRANSIENT, 4, 0, None, 4.0, 8.0),
        (Outcome.TRANSIENT, 10_000, 0, None, 30.0, 60.0),  # capped, and never given up
        (Outcome.TRANSIENT, 1, 0, 20.0, 20.0, 20.0),  # Retry-After honoured...
        (Outcome.TRANSIENT, 1, 0, 86_400.0, 60.0, 60.0),  # ...up to the cap
        (Outcome.REJECTED, 1, 1, None, 0.5, 1.0),
        (Outcome.REJECTED, 7, 4, None, 30.0, 60.0),
    ],
)
def test_retry_delays_grow_with_jitter_up_to_a_minute(
    outcome: Outcome, tries: int, rejections: int, retry_after: float | None,
    low: float, high: float,
) -> None:  # fmt: skip
    rng = random.Random(7)
    for _ in range(50):
        delay = RetryPolicy().delay_s(Attempt(outcome, "x", retry_after), tries, rejections, rng)
        assert delay is not None and low <= delay <= high


def test_a_refused_event_is_given_up_after_five_refusals_not_before() -> None:
    policy, refused = RetryPolicy(), Attempt(Outcome.REJECTED, "HTTP 404")
    assert [policy.delay_s(refused, n, n) is None for n in range(1, 7)] == [
        False, False, False, False, True, True,
    ]  # fmt: skip
    assert policy.delay_s(refused, 9, 4) is not None  # 500s in between do not count
    with pytest.raises(ValueError):
        policy.delay_s(Attempt(Outcome.DELIVERED), 1, 0)


def p(event_id: str, stream_id: str, seq: int, due_s: float = 0.0) -> Pending:
    return Pending(event_id, stream_id, seq, due_s)


@pytest.mark.parametrize(
    ("pending", "busy", "limit", "ready", "wake"),
    [
        # Per stream only the oldest event goes; streams go side by side, oldest first.
        ([p("a2", "A", 2), p("b1", "B", 3), p("a1", "A", 1)], set(), 4, ["a1", "b1"], None),
        # An attempt in flight holds its stream back, not the others.
        ([p("a1", "A", 1), p("a2", "A", 2), p("b1", "B", 3)], {"a1"}, 4, ["b1"], None),
        # Not due yet: waits, and says when to look again (the earliest head).
        ([p("a1", "A", 1, 9.0), p("a2", "A", 2), p("b1", "B", 3, 7.0)], set(), 4, [], 7.0),
        # A later event of a waiting stream never overtakes it.
        ([p("a1", "A", 1, 9.0), p("a2", "A", 2, 0.0)], set(), 4, [], 9.0),
        # The limit takes the oldest heads.
        ([p("c1", "C", 5), p("a1", "A", 1), p("b1", "B", 3)], set(), 2, ["a1", "b1"], None),
        ([p("a1", "A", 1)], set(), 0, [], None),
        ([], set(), 4, [], None),
    ],
)
def test_pick_ready_keeps_each_streams_order(
    pending: list[Pending], busy: set[str], limit: int, ready: list[str], wake: float | None
) -> None:
    picked, wake_at = pick_ready(pending, busy=busy, now_s=5.0, limit=limit)
    assert [item.event_id for item in picked] == ready
    assert wake_at == wake


# -- the signature and the headers --------------------------------------------------------------


def test_signature_is_the_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    # Computed independently: printf '%s' '1700000000.{"id":"e1"}' | openssl dgst -sha256 -hmac ...
    expected = "6a85cb117c993612a34c72b4cfb5a16baed25a80d26e298ce0e6671320fd07c8"
    assert signature("whsec_test", 1700000000, b'{"id":"e1"}') == f"sha256={expected}"


def test_headers_carry_the_id_and_timestamp_and_a_signature_only_with_a_secret() -> None:
    event = OutboxEvent("e1", "stream.completed", "s1", "h", T0, '{"id":"e1"}')
    body = event.body.encode()
    signed = request_headers(event, body, timestamp=1700000000, secret="whsec_test")
    assert signed["X-Streamup-Event-Id"] == "e1"
    assert signed["X-Streamup-Event-Type"] == "stream.completed"
    assert signed["X-Streamup-Timestamp"] == "1700000000"
    assert signed["X-Streamup-Signature"] == signature("whsec_test", 1700000000, body)
    assert "whsec_test" not in json.dumps(signed)
    unsigned = request_headers(event, body, timestamp=1700000000, secret=None)
    assert "X-Streamup-Signature" not in unsigned


# -- the hook's environment ---------------------------------------------------------------------


def test_hook_env_has_the_base_and_the_event_and_nothing_of_the_agents() -> None:
    doc = json.loads(encode_event(completed_document(stream(), METADATA, created_at=T0)))
    parent = {
        "PATH": "/opt/bin:/usr/bin", "HOME": "/home/streamup", "LANG": "C.UTF-8",
        "S3_SECRET_ACCESS_KEY": "k", "AWS_SECRET_ACCESS_KEY": "k", "WEBHOOK_SECRET": "w",
        "REDIS_URL": "redis://:pw@r/0", "PYTHONPATH": "/x",
    }  # fmt: skip
    env = hook_env(doc, parent)
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "HOME": "/home/streamup",
        "LANG": "C.UTF-8",
        "STREAMUP_EVENT": "stream.completed",
        "STREAMUP_EVENT_ID": doc["id"],
        "STREAMUP_STREAM_ID": stream().stream_id,
        "STREAMUP_BUCKET": "video-streams",
        "STREAMUP_KEY": stream().key,
        "STREAMUP_METADATA_KEY": stream().key + ".metadata.json",
        "STREAMUP_PATH": "/data/watch/cam1/a.mp4",
        "STREAMUP_SIZE_BYTES": "123",
        "STREAMUP_SHA256": "ab" * 32,
    }
    assert set(BASE_ENV) >= {"PATH", "HOME", "LANG"}


def test_hook_env_without_path_gets_a_default_and_a_null_sha_is_empty() -> None:
    doc = {"type": "stream.completed", "sha256": None, "metadata": {"original_file_path": "/a"}}
    env = hook_env(doc, {})
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["STREAMUP_SHA256"] == "" and env["STREAMUP_PATH"] == "/a"


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "named", "hint"),
    [
        ({"webhook_url": "ftp://hooks.example.com/x"}, "WEBHOOK_URL", "http:// or https://"),
        ({"webhook_url": "hooks.example.com/x"}, "WEBHOOK_URL", "http:// or https://"),
        ({"webhook_url": "https://:443/x"}, "WEBHOOK_URL", "with a host"),
        ({"webhook_url": "https://h.example:port/x"}, "WEBHOOK_URL", "with a host"),
        ({"webhook_url": ""}, "WEBHOOK_URL", "http:// or https://"),
        ({"on_complete_command": ""}, "ON_COMPLETE_COMMAND", "it is empty"),
        ({"on_complete_command": "   "}, "ON_COMPLETE_COMMAND", "it is empty"),
        ({"on_complete_command": "''"}, "ON_COMPLETE_COMMAND", "it is empty"),
        ({"on_complete_command": "notify 'unclosed"}, "ON_COMPLETE_COMMAND", "check its quotes"),
        ({"on_complete_command": "/no/such/hook --x"}, "ON_COMPLETE_COMMAND", "not found on PATH"),
        ({"hook_timeout_seconds": "0"}, "HOOK_TIMEOUT_SECONDS", "greater than 0"),
        ({"webhook_url": "https://h.example/x", "webhook_secret": ""}, "WEBHOOK_SECRET", "empty"),
        ({"webhook_secret": "whsec-x"}, "WEBHOOK_SECRET", "WEBHOOK_URL is not"),
    ],
)
def test_a_bad_event_setting_is_one_line_naming_it_and_the_fix(
    given: dict[str, str], named: str, hint: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(dict(given, watch_dir=str(tmp_path)))
    message = str(caught.value)
    assert message.startswith(named) and hint in message and "\n" not in message
    assert "whsec-x" not in message


def test_good_event_settings_are_split_and_masked(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "on_complete_command": "/bin/echo 'one arg' two",
            "webhook_url": "https://user:pw@hooks.example.com:8443/in?token=abc",
            "webhook_secret": "whsec-x",
            "hook_timeout_seconds": "5",
        },
        prepare_watch_dir=False,
    )
    assert settings.on_complete_argv == ["/bin/echo", "one arg", "two"]
    assert settings.hook_timeout_seconds == 5.0
    shown = settings.redacted()
    assert shown["webhook_url"] == "https://hooks.example.com:8443/in"
    assert shown["webhook_secret"] == "**********"
    assert "whsec-x" not in json.dumps(shown) and "abc" not in str(shown["webhook_url"])
    bare = load_settings({}, prepare_watch_dir=False)
    assert (bare.on_complete_argv, bare.webhook_url, bare.hook_timeout_seconds) == (None, None, 60)


def test_a_missing_hook_program_stops_the_agent_but_not_a_status_reader(tmp_path: Path) -> None:
    given = {"on_complete_command": "/no/such/hook --x", "watch_dir": str(tmp_path)}
    assert load_settings(given, prepare_watch_dir=False).on_complete_argv == [
        "/no/such/hook",
        "--x",
    ]
    with pytest.raises(
        ConfigError, match=r"^ON_COMPLETE_COMMAND names the program '/no/such/hook'"
    ):
        load_settings(given)
