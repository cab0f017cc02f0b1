"""What an operator sees: `streamup status`, /metrics, /healthz, /status, the demo.

Real parts throughout: `streamup run` and `streamup status` processes, moto's S3 server, a real
redis-server. One agent run per checkpoint backend is observed once (module-scoped), and several
tests each check one thing the operator was shown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis as redis_sync

from tests.agent import AgentProcess, MiB, agent_env, metadata_docs, wait_for
from tests.conftest import S3_TEST_CREDENTIALS
from tests.servers import free_port

README = Path(__file__).resolve().parent.parent / "README.md"


class Recorder(threading.Thread):
    """Appends to a file until told to stop: a recording whose end the test decides."""

    def __init__(self, path: Path, *, first_bytes: int = 6 * MiB, trickle_bytes: int = 256 * 1024):
        super().__init__(daemon=True)
        self.path = path
        self.first_bytes = first_bytes
        self.trickle_bytes = trickle_bytes
        self.done = threading.Event()

    def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as handle:
            handle.write(os.urandom(self.first_bytes))
            handle.flush()
            # The pace of a recorder (5 MiB/s), not a wait for a condition.
            while not self.done.wait(0.05):
                handle.write(os.urandom(self.trickle_bytes))
                handle.flush()

    def finish(self) -> int:
        self.done.set()
        if self.is_alive():
            self.join(10)
        return self.path.stat().st_size


def run_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamup", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_json(env: dict[str, str]) -> dict[str, Any]:
    result = run_status(env, "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet, or any more)
        return 0, ""


def row_for(doc: dict[str, Any], path: Path) -> dict[str, Any] | None:
    return next((row for row in doc["streams"] if row["path"] == str(path)), None)


def uploading(doc: dict[str, Any], path: Path) -> dict[str, Any] | None:
    row = row_for(doc, path)
    return row if row and row["state"] == "active" and row["uploaded_bytes"] > 0 else None


def sample_value(metrics_text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample, e.g. ('streamup_retries_total', 'kind="CheckpointError"')."""
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, metrics_text, re.MULTILINE)
    return float(found[1]) if found else None


def explain(agent: AgentProcess) -> str:
    """What a failed scenario needs in its message: is the agent alive, what did it log."""
    code = agent.proc.poll() if agent.proc is not None else None
    return f"agent exit code: {code}; end of its log:\n{agent.log_text()[-4000:]}"


def readme_metric_names() -> list[str]:
    section = README.read_text().split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    return sorted(set(re.findall(r"`(streamup_[a-z_]+)", section)))


@dataclass
class Observed:
    """What one agent run showed an operator; gathered once, checked by several tests."""

    backend: str
    path: Path
    size_bytes: int
    healthz: tuple[int, str]
    status_growing: dict[str, Any]  # `streamup status --json` while the file grew
    http_status_growing: dict[str, Any]  # /status at about the same moment
    metrics_idle: str  # /metrics before any file appeared
    metrics_growing: str
    metrics_done: str
    exit_code: int
    status_stopped: dict[str, Any]  # `streamup status --json` after the agent stopped
    log: str


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def observed(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    moto_endpoint: str,
    redis_server_url: str,
) -> Iterator[Observed]:
    backend = str(request.param)
    root = tmp_path_factory.mktemp(f"operator-{backend}")
    extra = {"PROM_PORT": str(free_port())}
    if backend == "redis":
        client = redis_sync.Redis.from_url(redis_server_url)
        client.flushall()
        client.close()
        extra["REDIS_URL"] = redis_server_url
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    env = agent_env(
        watch_dir=root / "watch",
        state_dir=root / "state",
        s3_endpoint=moto_endpoint,
        bucket=bucket,
        **extra,
    )
    port = int(extra["PROM_PORT"])
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", **S3_TEST_CREDENTIALS
    )
    agent = AgentProcess(env, root / "agent.log").start()
    recorder = Recorder(root / "watch" / "cam-1" / "take.mp4")
    try:
        healthz = wait_for(
            lambda: (r := http_get(port, "/healthz"))[0] == 200 and r,
            deadline_s=20,
            what="/healthz to answer 200",
        )
        metrics_idle = http_get(port, "/metrics")[1]
        recorder.start()
        status_growing = wait_for(
            lambda: (d := status_json(env)) and uploading(d, recorder.path) and d,
            deadline_s=30,
            what="`status --json` to show the growing file uploading",
        )
        http_status_growing = wait_for(
            lambda: (d := json.loads(http_get(port, "/status")[1] or "{}")) and d,
            deadline_s=10,
            what="/status",
        )
        metrics_growing = wait_for(
            lambda: (
                (t := http_get(port, "/metrics")[1])
                and sample_value(t, "streamup_streams_active") == 1
                and t
            ),
            deadline_s=10,
            what="the active-streams gauge",
        )
        size_bytes = recorder.finish()
        wait_for(lambda: metadata_docs(s3, bucket), deadline_s=30, what="the metadata object")
        metrics_done = wait_for(
            lambda: (
                (t := http_get(port, "/metrics")[1])
                and sample_value(t, "streamup_streams_active") == 0
                and t
            ),
            deadline_s=10,
            what="the active-streams gauge to drop",
        )
        exit_code = agent.stop()
        yield Observed(
            backend=backend,
            path=recorder.path,
            size_bytes=size_bytes,
            healthz=healthz,
            status_growing=status_growing,
            http_status_growing=http_status_growing,
            metrics_idle=metrics_idle,
            metrics_growing=metrics_growing,
            metrics_done=metrics_done,
            exit_code=exit_code,
            status_stopped=status_json(env),
            log=agent.log_text(),
        )
    except Exception as exc:
        raise AssertionError(f"{exc}\n{explain(agent)}") from exc
    finally:
        recorder.finish()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()


def test_status_json_shows_a_growing_file_as_an_active_stream(observed: Observed) -> None:
    doc = observed.status_growing
    assert (doc["source"], doc["store"], doc["store_error"]) == (
        "checkpoint_store",
        observed.backend,
        None,
    )
    row = uploading(doc, observed.path)
    assert row is not None
    assert row["uploaded_bytes"] >= 5 * MiB and row["parts"] >= 1
    assert row["size_bytes"] >= row["uploaded_bytes"]
    assert row["lag_bytes"] == row["size_bytes"] - row["uploaded_bytes"]
    assert row["key"].endswith("/cam-1/take.mp4")
    assert row["stalled"] is None  # only the running agent knows; the store does not say
    assert row["error"] is None and row["last_activity_at_utc"].endswith("+00:00")


def test_status_json_after_the_agent_stopped_lists_the_completion(observed: Observed) -> None:
    assert observed.exit_code == 0
    doc = observed.status_stopped
    assert doc["streams"] == []
    latest = doc["recent_completions"][0]
    assert latest["path"] == str(observed.path)
    assert (latest["state"], latest["end_reason"]) == ("completed", "idle")
    assert latest["size_bytes"] == observed.size_bytes
    assert latest["key"].endswith("/cam-1/take.mp4")


def test_http_status_has_the_shape_of_status_json(observed: Observed) -> None:
    live, offline = observed.http_status_growing, observed.status_growing
    assert live.keys() == offline.keys()
    assert live["source"] == "agent" and live["agent_id"]
    row, offline_row = uploading(live, observed.path), uploading(offline, observed.path)
    assert row is not None and offline_row is not None
    assert row.keys() == offline_row.keys()
    assert row["stream_id"] == offline_row["stream_id"]
    assert row["stalled"] is False
    assert row["owner"] == live["agent_id"]  # the agent works only on streams it leases
    # Redis keeps the lease for every agent (and `status`) to read; SQLite has one agent.
    assert offline_row["owner"] == (live["agent_id"] if observed.backend == "redis" else None)


def test_healthz_is_ok_while_the_agent_runs(observed: Observed) -> None:
    assert observed.healthz == (200, "ok\n")


def test_every_metric_the_readme_lists_is_exported(observed: Observed) -> None:
    names = readme_metric_names()
    assert len(names) >= 10
    for name in names:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", observed.metrics_idle, re.M), name


def test_metrics_count_the_upload_without_per_stream_labels(observed: Observed) -> None:
    idle, growing, done = observed.metrics_idle, observed.metrics_growing, observed.metrics_done
    assert sample_value(idle, "streamup_bytes_uploaded_total") == 0
    assert sample_value(done, "streamup_bytes_uploaded_total") == observed.size_bytes
    parts = sample_value(done, "streamup_parts_uploaded_total")
    assert parts is not None and parts >= 2
    assert sample_value(done, "streamup_part_upload_seconds_count") == parts
    assert sample_value(done, "streamup_streams_completed_total") == 1
    assert sample_value(done, "streamup_parts_reuploaded_total") == 0  # appended only
    assert sample_value(growing, "streamup_upload_lag_bytes") is not None
    assert sample_value(done, "streamup_upload_lag_bytes") == 0
    labels = set(re.findall(r"[{,]([a-z_]+)=", done))
    # Every label has a fixed set of values (after.lifecycle.Keep for `reason`): none per stream.
    assert labels <= {"kind", "status", "sink", "le", "reason", "trigger"}, labels
    assert observed.path.name not in done


def test_logs_are_json_lines_with_lifecycle_events_off_a_terminal(observed: Observed) -> None:
    lines = [line for line in observed.log.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line: one JSON object
    by_name = {event["event"]: event for event in events}
    for name in ("agent.started", "stream.discovered", "stream.verified", "stream.completed"):
        assert name in by_name, name
    assert by_name["stream.completed"]["path"] == str(observed.path)
    assert by_name["stream.completed"]["stream_id"]


def test_status_creates_nothing_where_no_agent_ever_ran(tmp_path: Path) -> None:
    env = agent_env(
        watch_dir=tmp_path / "no-watch",
        state_dir=tmp_path / "no-state",
        s3_endpoint="http://127.0.0.1:9",
        bucket="unused",
    )
    doc = status_json(env)
    assert (doc["streams"], doc["recent_completions"]) == ([], [])
    text = run_status(env)
    assert text.returncode == 0 and "no streams in progress" in text.stdout
    assert list(tmp_path.iterdir()) == []


def test_run_on_a_terminal_shows_live_progress_and_log_events(
    env: dict[str, str], watch_dir: Path
) -> None:
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamup", "run"],
        env=dict(env, LOG_LEVEL="INFO", COLUMNS="140"),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the process is gone
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text() -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(screen).decode(errors="replace"))

    recorder = Recorder(watch_dir / "take.mp4")
    try:
        wait_for(lambda: "no streams in progress" in text(), deadline_s=20, what="the board")
        recorder.start()
        board_line = (
            r"take\.mp4\s+active\s+[\d.]+ MiB / [\d.]+ MiB\s+\d+%\s+[\d.]+ \S+/s\s+\d+ parts?"
        )
        wait_for(lambda: re.search(board_line, text()), deadline_s=20, what="a progress line")
        recorder.finish()
        wait_for(lambda: "stream.completed" in text(), deadline_s=30, what="the completion log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(5)
    finally:
        recorder.finish()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    shown = text()
    assert "stream.discovered" in shown  # log events scroll above the board
    assert not any(line.lstrip().startswith("{") for line in shown.splitlines())


def test_demo_uploads_a_live_recording_and_verifies_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "REDIS_"))}
    # "Nothing configured": an operator's own settings must be neither used nor touched.
    env.update(REDIS_URL="redis://127.0.0.1:9/0", WATCH_EXTENSIONS=".mkv", S3_BUCKET_NAME="x!")
    result = subprocess.run(
        [sys.executable, "-m", "streamup", "demo", "--seconds", "5"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verified = re.search(r"^verified: .*\(sha256 ([0-9a-f]{64})\)$", result.stdout, re.M)
    assert verified is not None, result.stdout
    assert f'"sha256": "{verified[1]}"' in result.stdout  # the metadata printed agrees
    assert "uploaded" in result.stdout  # progress was shown while recording
