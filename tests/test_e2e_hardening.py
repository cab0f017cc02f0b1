"""Conditions recorders meet in the field, with real `streamup run` processes: a small open-files
limit, a restart on the same host with a shared Redis, a Redis that lost its data, an S3 that
answers 5xx from the first request on."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from streamup.files.budget import descriptors_in_use
from tests.agent import AgentProcess, wait_for

SMALL_FILES = 1000
OPEN_FILES_LIMIT = 256


class PeakDescriptors:
    """Samples /proc/<pid>/fd of a running agent until stopped; keeps the largest count."""

    def __init__(self, process: AgentProcess) -> None:
        assert process.proc is not None
        self.pid = process.proc.pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, descriptors_in_use(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _finished_files(folder: Path, count: int) -> dict[str, bytes]:
    """`count` tiny recordings, written an hour ago (finished: nothing waits for them to idle)."""
    written = {}
    past = time.time() - 3600
    for i in range(count):
        body = os.urandom(100 + i)
        path = folder / f"clip-{i:04d}.mp4"
        path.write_bytes(body)
        os.utime(path, (past, past))
        written[path.name] = body
    return written


def test_a_thousand_finished_files_under_256_descriptors_all_arrive_exact(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str, redis_url: str
) -> None:
    written = _finished_files(watch_dir, SMALL_FILES)
    started = time.monotonic()
    limit = ("prlimit", f"--nofile={OPEN_FILES_LIMIT}")
    process: AgentProcess = agent(
        limit, REDIS_URL=redis_url, FFPROBE_PATH="/bin/true", LOG_LEVEL="INFO"
    )
    peak = PeakDescriptors(process)
    try:
        wait_for(
            lambda: len(_keys(s3_client, bucket, ".metadata.json")) >= SMALL_FILES,
            deadline_s=240, what=f"{SMALL_FILES} metadata documents", every_s=1.0,
        )  # fmt: skip
        videos = _keys(s3_client, bucket, ".mp4")
    finally:
        highest = peak.stop()
        process.stop()
    elapsed_s = time.monotonic() - started
    print(f"{SMALL_FILES} files in {elapsed_s:.1f} s, peak descriptors {highest}")
    assert len(videos) == SMALL_FILES
    for key in videos:
        name = key.rsplit("/", 1)[-1]
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(written[name]).digest(), key
    assert 0 < highest < OPEN_FILES_LIMIT
    log = process.log_text()
    assert "Traceback" not in log
    assert "never retrieved" not in log


def _keys(s3: Any, bucket: str, suffix: str) -> list[str]:
    keys: list[str] = []
    token: dict[str, str] = {}
    try:
        while True:
            page = s3.list_objects_v2(Bucket=bucket, **token)
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}
    except s3.exceptions.NoSuchBucket:
        return []

