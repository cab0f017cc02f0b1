"""End to end: completion events through real `streamup run` processes to a real HTTP receiver
and a real command hook, across SIGKILLs (crash points) and a receiver that is down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests import servers
from tests.agent import doc_for, metadata_docs, sha256_file, wait_for
from tests.receiver import Receiver, always, fail_first, outbox_empty, status_json
from tests.test_e2e_metadata import make_media

SECRET = "whsec-7Qx2-never-in-a-log"
BASE_ENV = {"PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


def s3_metadata(s3: Any, bucket: str, doc: dict[str, Any]) -> bytes:
    key = doc["s3_key_prefix"] + ".metadata.json"
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def sample(metrics: str, name: str, sink: str) -> float:
    found = re.search(rf'^{name}{{sink="{sink}"}} (\S+)$', metrics, re.M)
    assert found, name
    return float(found.group(1))


def test_webhook_answered_500_three_times_gets_one_accepted_delivery_per_stream(
    agent: Any, env: dict[str, str], watch_dir: Path, s3_client: Any, bucket: str,
    receiver: Receiver,
) -> None:  # fmt: skip
    receiver.rule = fail_first(3)
    receiver.start()
    for name in ("a.mp4", "b.mp4"):
        (watch_dir / name).write_bytes(os.urandom(1_500_000))
    port = servers.free_port()
    process = agent(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET, PROM_PORT=str(port))
    wait_for(lambda: len(receiver.accepted()) >= 2, deadline_s=60, what="two accepted events")
    wait_for(lambda: outbox_empty(env), deadline_s=20, what="the outbox to empty")
    requests, accepted = receiver.snapshot(), receiver.accepted()
    assert len(accepted) == 2  # the outbox is empty: nothing more can come
    docs = metadata_docs(s3_client, bucket)
    for name in ("a.mp4", "b.mp4"):
        doc = doc_for(docs, name)
        assert doc is not None
        [delivery] = [r for r in accepted if r.json()["stream_id"] == doc["stream_id"]]
        tries = [r for r in requests if r.event_id == delivery.event_id]
        assert [r.status for r in tries] == [500, 500, 500, 200]
        assert all(r.signature_is_valid(SECRET) for r in tries)
        assert not any(r.signature_is_valid("another secret") for r in tries)
        assert len({r.headers["X-Streamup-Timestamp"] for r in tries}) >= 2  # per attempt
        for r in tries:
            assert abs(int(r.headers["X-Streamup-Timestamp"]) - r.at) < 5
            assert r.body == delivery.body  # byte for byte the same event every time
        event = delivery.json()
        assert event["metadata"] == json.loads(s3_metadata(s3_client, bucket, doc))
        assert event["id"] == delivery.event_id
        assert delivery.headers["X-Streamup-Event-Type"] == event["type"] == "stream.completed"
        assert delivery.headers["Content-Type"] == "application/json"
        assert event["bucket"] == bucket and event["key"] == doc["s3_key_prefix"]
        assert event["metadata_key"] == doc["s3_key_prefix"] + ".metadata.json"
        assert event["size_bytes"] == (watch_dir / name).stat().st_size
        assert event["sha256"] == sha256_file(watch_dir / name) == doc["sha256"]
        assert event.keys() >= {"created_at", "duration_seconds"}
        assert delivery.path == "/hooks/streamup?token=s3cr3t-in-url"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        live = json.loads(response.read())
    assert live["events"] == {"waiting": 0, "undeliverable": 0, "events": []}
    metrics = scrape(port)
    assert SECRET not in json.dumps(live) + metrics + json.dumps(status_json(env))
    assert sample(metrics, "streamup_events_delivered_total", "webhook") == 2
    assert sample(metrics, "streamup_event_retries_total", "webhook") == 6
    assert sample(metrics, "streamup_events_undeliverable_total", "webhook") == 0
    assert process.stop() == 0
    log = process.log_text()
    assert SECRET not in log and "s3cr3t-in-url" not in log
    [config] = process.events_named("agent.config")
    assert config["webhook_secret"] == "**********"
    assert config["webhook_url"] == f"http://127.0.0.1:{receiver.port}/hooks/streamup"
    assert len(process.events_named("event.retrying")) == 6


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_kill_before_delivery_delivers_after_restart_under_the_same_id(
    agent: Any, env: dict[str, str], watch_dir: Path, s3_client: Any, bucket: str,
    receiver: Receiver, backend: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    if backend == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")  # the agents and `status`
    receiver.start()
    (watch_dir / "k.mp4").write_bytes(os.urandom(1_200_000))
    first = agent(WEBHOOK_URL=receiver.url, STREAMUP_CRASH_AT="before_event_delivery")
    assert first.wait() == 137
    assert first.events_named("test.crash")[0]["point"] == "before_event_delivery"
    assert receiver.snapshot() == []
    doc = doc_for(metadata_docs(s3_client, bucket), "k.mp4")
    assert doc is not None  # complete in S3; only the telling is left
    waiting = status_json(env)["events"]
    assert (waiting["waiting"], waiting["undeliverable"]) == (1, 0)
    [row] = waiting["events"]
    assert row["stream_id"] == doc["stream_id"] and row["attempts"] == 0
    second = agent(WEBHOOK_URL=receiver.url)
    wait_for(lambda: outbox_empty(env), deadline_s=30, what="the outbox to empty")
    [delivery] = receiver.snapshot()
    assert delivery.event_id == row["event_id"] == delivery.json()["id"]
    assert delivery.json()["metadata"] == json.loads(s3_metadata(s3_client, bucket, doc))
    assert second.stop() == 0
    if backend == "redis":  # and once in the capped stream, for consumer groups
        client = redis_sync.Redis.from_url(env["REDIS_URL"], decode_responses=True)
        try:
            [(_, fields)] = client.xrange("streams:events")
        finally:
            client.close()
        assert fields["id"] == row["event_id"] and fields["event"] == delivery.body.decode()


def test_kill_after_delivery_sends_the_event_again_under_the_same_id(
    agent: Any, env: dict[str, str], watch_dir: Path, receiver: Receiver
) -> None:
    receiver.start()
    (watch_dir / "twice.mp4").write_bytes(os.urandom(1_000_000))
    first = agent(WEBHOOK_URL=receiver.url, STREAMUP_CRASH_AT="after_event_delivery")
    assert first.wait() == 137
    [before] = receiver.accepted()  # the receiver has it; the outbox does not know yet
    assert status_json(env)["events"]["waiting"] == 1
    second = agent(WEBHOOK_URL=receiver.url)
    wait_for(lambda: outbox_empty(env), deadline_s=30, what="the outbox to empty")
    again = receiver.accepted()
    assert [r.event_id for r in again] == [before.event_id] * 2  # at least once: de-duplicable
    assert again[1].body == before.body
    assert second.stop() == 0


def test_kill_between_metadata_and_finish_still_tells_the_completion_once(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path, s3_client: Any,
    bucket: str, receiver: Receiver,
) -> None:  # fmt: skip
    receiver.start()
    make_media(tmp_path / "m.mp4", 2.0)  # real media: the probe, run again, says the same
    os.replace(tmp_path / "m.mp4", watch_dir / "m.mp4")
    first = agent(WEBHOOK_URL=receiver.url, STREAMUP_CRASH_AT="before_finish")
    assert first.wait() == 137
    doc = doc_for(metadata_docs(s3_client, bucket), "m.mp4")
    assert doc is not None
    offline = status_json(env)
    assert offline["events"]["waiting"] == 0  # no event before the stream is finished...
    assert [row["state"] for row in offline["streams"]] == ["s3_completed"]  # ...which resumes
    second = agent(WEBHOOK_URL=receiver.url)
    wait_for(lambda: len(receiver.accepted()) == 1, deadline_s=30, what="the event")
    wait_for(lambda: outbox_empty(env), deadline_s=20, what="the outbox to empty")
    [delivery] = receiver.snapshot()
    told = delivery.json()["metadata"]
    stored = json.loads(s3_metadata(s3_client, bucket, doc))
    # Rebuilt after the crash: the same document but for when it was built.
    assert told["duration_seconds"] == pytest.approx(2.0, abs=0.1)
    assert {k: v for k, v in told.items() if k != "processed_at_utc"} == {
        k: v for k, v in stored.items() if k != "processed_at_utc"
    }
    assert second.stop() == 0


def test_events_queue_while_the_receiver_is_down_for_30_s_then_drain_once_each(
    agent: Any, env: dict[str, str], watch_dir: Path, receiver: Receiver
) -> None:
    process = agent(WEBHOOK_URL=receiver.url)  # nothing listens on the receiver's port yet
    down_at = time.monotonic()
    for index in range(3):
        (watch_dir / f"cam{index}.mp4").write_bytes(os.urandom(800_000))
        time.sleep(1)

    def three_waiting() -> dict[str, Any] | None:
        events = status_json(env)["events"]
        rows = events["events"]
        done = events["waiting"] == 3 and all(row["last_error"] for row in rows)
        return events if done else None

    events = wait_for(three_waiting, deadline_s=30, what="three events waiting with errors")
    assert all("Connect" in row["last_error"] for row in events["events"]), events
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    assert receiver.snapshot() == []
    receiver.start()
    back_at = time.monotonic()
    wait_for(lambda: len(receiver.accepted()) == 3, deadline_s=90, what="the queue to drain")
    drained_s = time.monotonic() - back_at
    wait_for(lambda: outbox_empty(env), deadline_s=20, what="the outbox to empty")
    accepted = receiver.accepted()
    assert len({r.event_id for r in accepted}) == 3 == len(receiver.snapshot())
    assert {r.json()["metadata"]["original_file_path"] for r in accepted} == {
        str(watch_dir / f"cam{index}.mp4") for index in range(3)
    }
    assert drained_s < 65  # the backoff is capped at a minute, and all go once one gets through
    assert process.stop() == 0
    assert process.events_named("event.retrying")


HOOK = """
import json, os, pathlib, subprocess, sys, time
out, plan = pathlib.Path(sys.argv[1]), sys.argv[2].split(",")
n = len(list(out.glob("run-*.json"))) + 1
step = plan[min(n, len(plan)) - 1]
(out / f"stdin-{n}.json").write_bytes(sys.stdin.buffer.read())
(out / f"run-{n}.json").write_text(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ)}))
print(f"hook run {n} says hello", flush=True)
if step == "hang":
    child = subprocess.Popen(["sleep", "300"])
    (out / "child.pid").write_text(str(child.pid))
    time.sleep(300)
if step == "fail":
    print("boom: the downstream said no", file=sys.stderr, flush=True)
    sys.exit(1)
"""


def hook_command(tmp_path: Path, plan: str) -> tuple[str, Path]:
    script, out = tmp_path / "hook.py", tmp_path / "hook-out"
    script.write_text(HOOK)
    out.mkdir()
    return f"{sys.executable} {script} {out} {plan} 'one arg, with spaces'", out


def runs(out: Path) -> list[dict[str, Any]]:
    count = len(list(out.glob("run-*.json")))
    return [json.loads((out / f"run-{n}.json").read_text()) for n in range(1, count + 1)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_command_hook_gets_the_metadata_on_stdin_and_only_its_variables(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path, s3_client: Any,
    bucket: str, receiver: Receiver,
) -> None:  # fmt: skip
    receiver.start()
    command, out = hook_command(tmp_path, "ok")
    (watch_dir / "h.mp4").write_bytes(os.urandom(1_300_000))
    process = agent(
        ON_COMPLETE_COMMAND=command, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET,
        STREAMUP_TEST_CANARY="agent-only",
    )  # fmt: skip
    wait_for(lambda: runs(out) and receiver.accepted(), deadline_s=40, what="hook and webhook")
    wait_for(lambda: outbox_empty(env), deadline_s=20, what="the outbox to empty")
    doc = doc_for(metadata_docs(s3_client, bucket), "h.mp4")
    assert doc is not None
    [run] = runs(out)
    assert (out / "stdin-1.json").read_bytes() == s3_metadata(s3_client, bucket, doc)
    assert run["argv"][2] == "one arg, with spaces"  # split like a shell, run without one
    hook_env = run["env"]
    event = receiver.accepted()[0].json()
    assert {k: v for k, v in hook_env.items() if k.startswith("STREAMUP_")} == {
        "STREAMUP_EVENT": "stream.completed",
        "STREAMUP_EVENT_ID": event["id"],
        "STREAMUP_STREAM_ID": doc["stream_id"],
        "STREAMUP_BUCKET": bucket,
        "STREAMUP_KEY": doc["s3_key_prefix"],
        "STREAMUP_METADATA_KEY": doc["s3_key_prefix"] + ".metadata.json",
        "STREAMUP_PATH": str(watch_dir / "h.mp4"),
        "STREAMUP_SIZE_BYTES": str(doc["total_size_bytes"]),
        "STREAMUP_SHA256": doc["sha256"],
    }
    # Nothing of the agent's own: no S3 keys, no webhook secret, no other variable.
    assert {k for k in hook_env if not k.startswith("STREAMUP_")} <= BASE_ENV
    assert "testing" not in json.dumps(hook_env) and SECRET not in json.dumps(hook_env)
    [finished] = process.events_named("hook.finished")
    assert finished["exit_code"] == 0 and "hook run 1 says hello" in finished["output"]
    assert len(receiver.snapshot()) == 1
    assert process.stop() == 0


def test_a_hanging_hook_is_killed_with_its_children_and_one_that_exits_1_is_retried(
    agent: Any, env: dict[str, str], watch_dir: Path, tmp_path: Path
) -> None:
    command, out = hook_command(tmp_path, "hang,fail,ok")
    (watch_dir / "slow.mp4").write_bytes(os.urandom(900_000))
    process = agent(ON_COMPLETE_COMMAND=command, HOOK_TIMEOUT_SECONDS="2")
    wait_for(lambda: len(runs(out)) >= 3, deadline_s=60, what="three hook runs")
    wait_for(lambda: outbox_empty(env), deadline_s=20, what="the outbox to empty")
    finished = process.events_named("hook.finished")
    assert [f["exit_code"] for f in finished] == [None, 1, 0]
    hung, failed, _ok = finished
    assert hung["error"] == "killed after 2 s (HOOK_TIMEOUT_SECONDS)"
    assert 2 <= hung["duration_s"] < 5
    assert "hook run 1 says hello" in hung["output"]
    assert "boom: the downstream said no" in failed["output"]
    child = int((out / "child.pid").read_text())
    wait_for(lambda: not alive(child), deadline_s=5, what="the hook's child to be killed too")
    retries = process.events_named("event.retrying")
    assert [r["error"].split(": ", 1)[1] for r in retries] == [
        "killed after 2 s (HOOK_TIMEOUT_SECONDS)",
        "exit status 1",
    ]
    assert len(runs(out)) == 3
    assert process.stop() == 0


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"WEBHOOK_URL": "ftp://hooks.example.com/x"}, "WEBHOOK_URL"),
        ({"ON_COMPLETE_COMMAND": "  "}, "ON_COMPLETE_COMMAND"),
        ({"WEBHOOK_SECRET": SECRET}, "WEBHOOK_SECRET"),
    ],
)
def test_a_bad_event_setting_stops_the_agent_with_one_line_naming_it(
    env: dict[str, str], settings: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamup", "run"], env=dict(env, **settings),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamup: error:")]
    assert len(errors) == 1, result.stderr
    assert named in errors[0]
    assert SECRET not in result.stderr


def test_always_refused_event_is_undeliverable_and_shown_with_its_error(
    agent: Any, env: dict[str, str], watch_dir: Path, receiver: Receiver
) -> None:
    receiver.rule = always(410)
    receiver.start()
    (watch_dir / "nope.mp4").write_bytes(os.urandom(700_000))
    process = agent(WEBHOOK_URL=receiver.url)

    def undeliverable() -> dict[str, Any] | None:
        events = status_json(env)["events"]
        return events if events["undeliverable"] == 1 else None

    events = wait_for(undeliverable, deadline_s=60, what="the event to be undeliverable")
    [row] = events["events"]
    assert row["state"] == "undeliverable" and row["attempts"] == 5
    assert row["last_error"].startswith("HTTP 410 Gone")
    assert row["sinks"]["webhook"]["state"] == "undeliverable"
    assert len(receiver.snapshot()) == 5
    assert "undeliverable" in subprocess.run(
        [sys.executable, "-m", "streamup", "status"], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert process.stop() == 0
    assert process.events_named("event.undeliverable")
