"""What an operator sees while the Redis checkpoint store is down, and that no secret leaks.

One agent run, observed once: a password-protected redis-server of its own is stopped while a
file grows, then started again on the same port (its append-only file keeps the checkpoints).
Every text the operator could read (logs, /metrics, /status, /healthz, `streamup status`) is kept
and searched for the S3 secret and the Redis password.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import servers
from tests.agent import AgentProcess, agent_env, doc_for, metadata_docs, sha256_file, wait_for
from tests.conftest import S3_TEST_CREDENTIALS
from tests.test_operator import (
    Recorder,
    explain,
    http_get,
    row_for,
    run_status,
    sample_value,
)

S3_SECRET = "s3secret-QhT7e2Wq9Zk4"
REDIS_PASSWORD = "redispw-Vb8Lm3Xc6Rn1"


class PasswordRedis:
    """A redis-server that wants a password and keeps its data across a restart (AOF)."""

    def __init__(self, workdir: Path, password: str) -> None:
        self.workdir = workdir
        self.password = password
        self.port = servers.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed; run `make setup`"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(
            [binary, *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        servers.wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            servers.stop(self.proc)


@dataclass
class Outage:
    healthz_up: tuple[int, str]
    healthz_down: tuple[int, str]
    healthz_back: tuple[int, str]
    status_down: dict[str, Any]  # /status while Redis was gone
    metrics_down: str
    cli_down: subprocess.CompletedProcess[str]  # `streamup status --json` while Redis was gone
    redis_url: str
    path: Path
    metadata: dict[str, Any] | None
    exit_code: int
    seen: list[str] = field(default_factory=list)  # every text an operator could read


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Outage]:
    root = tmp_path_factory.mktemp("outage")
    redis = PasswordRedis(root, REDIS_PASSWORD)
    redis.start()
    port, bucket = servers.free_port(), f"test-{uuid.uuid4().hex[:12]}"
    env = agent_env(
        watch_dir=root / "watch",
        state_dir=root / "state",
        s3_endpoint=moto_endpoint,
        bucket=bucket,
        REDIS_URL=redis.url,
        S3_SECRET_ACCESS_KEY=S3_SECRET,
        PROM_PORT=str(port),
        SHUTDOWN_GRACE_SECONDS="5",
    )
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", **S3_TEST_CREDENTIALS
    )
    agent = AgentProcess(env, root / "agent.log").start()
    recorder = Recorder(root / "watch" / "take.mp4")
    seen: list[str] = []

    def look(path: str) -> tuple[int, str]:
        answer = http_get(port, path)
        seen.append(answer[1])
        return answer

    def stream_row() -> dict[str, Any] | None:
        return row_for(json.loads(look("/status")[1] or '{"streams": []}'), recorder.path)

    try:
        healthz_up = wait_for(
            lambda: (r := look("/healthz"))[0] == 200 and r, deadline_s=20, what="200"
        )
        recorder.start()
        wait_for(
            lambda: (row := stream_row()) and row["uploaded_bytes"] > 0,
            deadline_s=20,
            what="a part",
        )
        cli_up = run_status(env, "--json")
        seen += [cli_up.stdout, cli_up.stderr, look("/metrics")[1]]

        redis.stop()
        healthz_down = wait_for(
            lambda: (r := look("/healthz"))[0] == 503 and r, deadline_s=10, what="503"
        )
        wait_for(lambda: (row := stream_row()) and row["stalled"], deadline_s=15, what="stalled")
        status_down = json.loads(look("/status")[1])
        metrics_down = wait_for(
            lambda: (
                (t := look("/metrics")[1])
                and (sample_value(t, "streamup_streams_stalled") or 0) > 0
                and t
            ),
            deadline_s=10,
            what="the stalled gauge",
        )
        cli_down = run_status(env, "--json")
        seen += [cli_down.stdout, cli_down.stderr]

        redis.start()
        healthz_back = wait_for(
            lambda: (r := look("/healthz"))[0] == 200 and r, deadline_s=10, what="200"
        )
        wait_for(
            lambda: (row := stream_row()) is None or not row["stalled"],
            deadline_s=30,
            what="catch-up",
        )
        recorder.finish()
        docs = wait_for(lambda: metadata_docs(s3, bucket), deadline_s=30, what="the metadata")
        look("/status")
        exit_code = agent.stop()
        seen.append(agent.log_text())
        yield Outage(
            healthz_up=healthz_up,
            healthz_down=healthz_down,
            healthz_back=healthz_back,
            status_down=status_down,
            metrics_down=metrics_down,
            cli_down=cli_down,
            redis_url=redis.url,
            path=recorder.path,
            metadata=doc_for(docs, "take.mp4"),
            exit_code=exit_code,
            seen=seen,
        )
    except Exception as exc:
        raise AssertionError(f"{exc}\n{explain(agent)}") from exc
    finally:
        recorder.finish()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
        redis.stop()


def test_healthz_is_503_while_the_redis_store_is_gone(outage: Outage) -> None:
    assert outage.healthz_up == (200, "ok\n")
    assert outage.healthz_down == (503, "unhealthy\n")
    assert outage.healthz_back == (200, "ok\n")


def test_status_shows_the_stream_stalled_while_redis_is_gone(outage: Outage) -> None:
    doc = outage.status_down
    row = row_for(doc, outage.path)
    assert row is not None and row["stalled"] is True
    assert row["state"] == "active"
    assert "Redis at redis://127.0.0.1" in row["error"]
    assert doc["store_error"] and "Redis at" in doc["store_error"]
    retries = sample_value(outage.metrics_down, "streamup_retries_total", 'kind="CheckpointError"')
    assert retries is not None and retries > 0


def test_the_stream_catches_up_and_completes_exactly_after_the_outage(outage: Outage) -> None:
    assert outage.exit_code == 0
    assert outage.metadata is not None
    assert outage.metadata["total_size_bytes"] == outage.path.stat().st_size
    assert outage.metadata["sha256"] == sha256_file(outage.path)


def test_status_cli_names_the_unreachable_store_in_one_line(outage: Outage) -> None:
    result = outage.cli_down
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamup: error: Redis at redis://127.0.0.1")


def test_no_secret_appears_in_logs_metrics_or_status(outage: Outage) -> None:
    everything = "\n".join(outage.seen)
    assert "agent.config" in everything and "stream.stalled" in everything  # the logs are here
    assert "streamup_bytes_uploaded_total" in everything and '"streams"' in everything
    assert REDIS_PASSWORD in outage.redis_url  # the agent really had the password to leak
    assert S3_SECRET not in everything
    assert REDIS_PASSWORD not in everything
