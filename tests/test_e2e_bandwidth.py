"""BANDWIDTH_LIMIT end to end: real `streamup run` processes behind a proxy that timestamps every
block going up. The timetable's switching and the priority rule are unit-tested
(tests/test_bandwidth.py); here: the rate on the wire, live before backlog, and shutdown."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.agent import MiB, assert_exact, grow, wait_for, wait_metadata
from tests.proxy import FaultProxy
from tests.receiver import status_json
from tests.servers import free_port

PART = 5 * MiB
LIMIT = 2 * MiB


def finished_file(watch_dir: Path, tmp_path: Path, name: str, size: int) -> Path:
    """A finished file copied in an hour after it was written: backlog, not a recording."""
    source = tmp_path / f"source-{name}"
    source.write_bytes(os.urandom(size))
    an_hour_ago = time.time() - 3600
    os.utime(source, (an_hour_ago, an_hour_ago))
    shutil.copy2(source, watch_dir / name)
    return source


def test_a_finished_file_goes_up_smoothly_at_the_limit(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = finished_file(watch_dir, tmp_path, "backlog.mp4", 40 * MiB)
    first = agent(S3_ENDPOINT_URL=proxy.url, BANDWIDTH_LIMIT="2M")
    doc = wait_metadata(s3_client, bucket, "backlog.mp4", deadline_s=60)
    parts = [at for at, n in proxy.sent if n >= 16 * 1024]  # part bodies, not requests
    start, end = parts[0], parts[-1]
    assert end - start > 17, "40 MiB at 2 MiB/s take about 20 s"
    windows = [proxy.bytes_sent_between(t, t + 5) / 5 for t in _steps(start, end - 5, 5)]
    assert windows and all(abs(rate - LIMIT) <= 0.15 * LIMIT for rate in windows), windows
    peak = max(proxy.bytes_sent_between(t, t + 1) for t in _steps(start, end - 1, 0.25))
    assert peak <= 3 * MiB, peak
    assert_exact(s3_client, bucket, doc, source, tmp_path)
    assert [e["bytes_per_second"] for e in first.events_named("bandwidth.limit")] == [LIMIT]
    assert first.stop() == 0


def _steps(start: float, stop: float, step: float) -> list[float]:
    count = int((stop - start) / step) + 1
    return [start + i * step for i in range(max(count, 0))]


def test_a_live_recording_keeps_up_while_a_backlog_drains_at_the_limit(
    agent: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, bucket: str
) -> None:
    port = free_port()
    finished_file(watch_dir, tmp_path, "backlog.mp4", 30 * MiB)
    first = agent(
        S3_ENDPOINT_URL=proxy.url, BANDWIDTH_LIMIT="2M", PROM_PORT=str(port),
        STREAM_TIMEOUT_SECONDS="5", SHUTDOWN_GRACE_SECONDS="1",
    )  # fmt: skip
    wait_for(lambda: proxy.bytes_up > 2 * MiB, deadline_s=30, what="the backlog to start")
    live = watch_dir / "live.mp4"
    writer = grow(live, 12 * MiB, 1 * MiB)
    lags, backlog_seen = [], []
    while writer.is_alive():
        rows = {Path(r["path"]).name: r for r in _status(port)["streams"]}
        if "live.mp4" in rows:  # the file as it is now, against what S3 acknowledged
            lags.append(live.stat().st_size - rows["live.mp4"]["uploaded_bytes"])
        if "backlog.mp4" in rows:
            backlog_seen.append(rows["backlog.mp4"]["uploaded_bytes"])
        time.sleep(0.25)
    writer.join()
    assert len(lags) > 30 and max(lags) < 2 * PART, lags
    # The backlog went on meanwhile (no starvation), at what the live stream left of the line.
    assert backlog_seen[-1] - backlog_seen[0] >= 2 * PART, backlog_seen
    assert first.stop() == 0


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc


def test_sigterm_during_a_paced_part_exits_in_the_grace_and_leaves_the_part_for_resume(
    agent: Any, env: dict[str, str], proxy: FaultProxy, watch_dir: Path, tmp_path: Path
) -> None:
    finished_file(watch_dir, tmp_path, "slow.mp4", PART + MiB)
    first = agent(S3_ENDPOINT_URL=proxy.url, BANDWIDTH_LIMIT="256k", SHUTDOWN_GRACE_SECONDS="1")
    wait_for(lambda: proxy.bytes_up > 512 * 1024, deadline_s=30, what="a paced part under way")
    stopped_at = time.monotonic()
    assert first.stop(timeout_s=15) == 0  # one SIGTERM (a second one would exit at once)
    assert time.monotonic() - stopped_at < 6  # 1 s of grace, not the 20 s the part needs
    assert not first.events_named("part.uploaded")
    # Nothing half-sent was checkpointed: the next start sends both parts (the resume path of
    # tests/test_e2e_recovery.py).
    [row] = status_json(env)["streams"]
    assert (row["state"], row["parts"], row["uploaded_bytes"]) == ("active", 0, 0), row
