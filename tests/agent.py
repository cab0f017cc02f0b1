"""Helpers for end-to-end tests: real `streamup run` processes, real writers, S3 checks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")
MiB = 1024 * 1024


def wait_for(
    condition: Callable[[], T | None], *, deadline_s: float, what: str, every_s: float = 0.1
) -> T:
    """Poll until `condition()` is truthy; fail with `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(every_s)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


class AgentProcess:
    """One `python -m streamup run` process with its own environment and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, prefix: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.prefix = prefix  # run under a wrapper, e.g. ("prlimit", "--nofile=256")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "streamup", "run"],
            env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout_s: float = 60) -> int:
        """The exit code of a process that ends by itself (a crash point, a bad setting)."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("agent did not stop within the deadline") from None
        return int(self.proc.returncode)


def agent_env(
    *, watch_dir: Path, state_dir: Path, s3_endpoint: str, bucket: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "REDIS_"))}
    env.update(
        WATCH_DIR=str(watch_dir),
        STATE_DIR=str(state_dir),
        S3_ENDPOINT_URL=s3_endpoint,
        S3_ACCESS_KEY_ID="testing",
        S3_SECRET_ACCESS_KEY="testing",
        S3_BUCKET_NAME=bucket,
        CHUNK_SIZE_BYTES=str(5 * MiB),
        STREAM_TIMEOUT_SECONDS="2",
        SCAN_INTERVAL_SECONDS="1",
        PROM_PORT="0",
        LOG_LEVEL="DEBUG",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def metadata_docs(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Every metadata JSON in the bucket, by the video key it describes."""
    try:
        listing = s3.list_objects_v2(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        return {}
    docs = {}
    for item in listing.get("Contents", []):
        if item["Key"].endswith(".metadata.json"):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            doc = json.loads(body)
            docs[doc["s3_key_prefix"]] = doc
    return docs


def object_keys(s3: Any, bucket: str) -> list[str]:
    try:
        listing = s3.list_objects_v2(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        return []
    return sorted(item["Key"] for item in listing.get("Contents", []))


def download(s3: Any, bucket: str, key: str, dest: Path) -> Path:
    s3.download_file(bucket, key, str(dest))
    return dest


def doc_for(docs: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The metadata document whose video key ends with `/name`."""
    for key, doc in docs.items():
        if key.endswith("/" + name):
            return doc
    return None


def write_slowly(
    target: Path | BinaryIO, *, total_bytes: int, rate_bytes_s: int, block: int = 256 * 1024
) -> None:
    """Append random bytes at a steady rate (a recorder that only appends). `target` is a path
    (opened, written, closed) or a handle the caller keeps open."""
    if isinstance(target, Path):
        with target.open("wb") as handle:
            write_slowly(handle, total_bytes=total_bytes, rate_bytes_s=rate_bytes_s, block=block)
        return
    start = time.monotonic()
    written = 0
    while written < total_bytes:
        chunk = os.urandom(min(block, total_bytes - written))
        target.write(chunk)
        target.flush()
        written += len(chunk)
        delay = start + written / rate_bytes_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def assert_exact(s3: Any, bucket: str, doc: dict[str, Any], local: Path, tmp_path: Path) -> None:
    copy = download(s3, bucket, doc["s3_key_prefix"], tmp_path / "downloaded")
    assert sha256_file(copy) == sha256_file(local) == doc["sha256"]
    assert doc["total_size_bytes"] == local.stat().st_size == copy.stat().st_size
    assert sum(c["size_bytes"] for c in doc["chunks"]) == doc["total_size_bytes"]
    copy.unlink()


def wait_metadata(s3: Any, bucket: str, name: str, *, deadline_s: float = 30) -> dict[str, Any]:
    """The metadata document of the object for file `name`, once it exists."""
    return wait_for(
        lambda: doc_for(metadata_docs(s3, bucket), name), deadline_s=deadline_s,
        what=f"the metadata of {name}",
    )  # fmt: skip


def grow(path: Path, total_bytes: int, rate_bytes_s: int) -> threading.Thread:
    thread = threading.Thread(
        target=write_slowly, args=(path,),
        kwargs={"total_bytes": total_bytes, "rate_bytes_s": rate_bytes_s},
    )  # fmt: skip
    thread.start()
    return thread


def kill_after_first_part(agent: AgentProcess, handle: BinaryIO) -> None:
    """Write a part and a bit into `handle` (a recording the caller keeps open), wait until the
    agent has uploaded a part, then kill it with SIGKILL."""
    write_slowly(handle, total_bytes=5 * MiB + 100, rate_bytes_s=4 * MiB)
    wait_for(lambda: agent.events_named("part.uploaded"), deadline_s=20, what="a part")
    agent.kill()
