"""Workload 4, big folders: many small files already present and already uploaded.

The agent uploads them once (that first pass is measured too), is stopped with SIGTERM and
started again. The second start must upload nothing (no `stream.discovered` event, no write
request reaching moto) and be ready, first full scan included, quickly: `agent.started` is
logged after that scan.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Any

from harness import STREAMUP_BUCKET, Agent, Bench, MiB, RssSampler, cpu_seconds, memory_bytes
from objects import empty_bucket

FILES_PER_FOLDER = 100
READY_TARGET_S = 10.0


def run(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "UPLOAD_CONCURRENCY": "4",
        "CHUNK_SIZE_BYTES": str(10 * MiB),
        "STREAM_TIMEOUT_SECONDS": "2",
        "SCAN_INTERVAL_SECONDS": "5",
        "LOG_LEVEL": "INFO",
    }
    workdir = bench.fresh_dir("folders-agent")
    agent = Agent(workdir, bench.moto.endpoint, STREAMUP_BUCKET, settings)
    count = opts.folder_files
    make_files(agent, count, opts.folder_file_kib * 1024)
    first = first_pass(agent, count)
    first["stop_s"] = agent.stop()
    second = second_start(bench, agent, opts.folder_watch_s)
    agent.stop()
    shutil.rmtree(workdir)
    empty_bucket(bench.s3, STREAMUP_BUCKET)
    return {
        "files": count,
        "file_bytes": opts.folder_file_kib * 1024,
        "command": agent.command(),
        "first_pass": first,
        "second_start": second,
        "ready_target_s": READY_TARGET_S,
    }


def make_files(agent: Agent, count: int, size: int) -> None:
    """`count` random files, FILES_PER_FOLDER to a subfolder."""
    for index in range(count):
        folder = agent.watch_dir / f"day{index // FILES_PER_FOLDER:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"clip{index:05d}.mp4").write_bytes(os.urandom(size))
    os.sync()


def first_pass(agent: Agent, count: int) -> dict[str, Any]:
    """Start the agent on the full folder and wait until every file is an object."""
    started = agent.start()
    with RssSampler(agent.pid) as rss:
        agent.wait_for("stream.completed", count=count, deadline_s=600 + count * 0.2)
    last = max(e["t"] for e in agent.named("stream.completed"))
    return {
        "upload_all_s": last - started,
        "files_per_s": count / (last - started),
        "cpu_s": cpu_seconds(agent.pid),
        "peak_rss_bytes": rss.peak_bytes,
    }


def second_start(bench: Bench, agent: Agent, watch_s: float) -> dict[str, Any]:
    """Start again over the same folder and store; watch it for `watch_s` seconds."""
    moto_log = bench.moto.log_offset()
    started = agent.start()
    with RssSampler(agent.pid) as rss:
        ready = agent.wait_for("agent.started", deadline_s=120)
        cpu_at_ready = cpu_seconds(agent.pid)
        time.sleep(watch_s)
        agent.poll_events()
    return {
        "ready_s": ready["t"] - started,
        "cpu_to_ready_s": cpu_at_ready,
        "cpu_per_s_after_ready": (cpu_seconds(agent.pid) - cpu_at_ready) / watch_s,
        "watched_s": watch_s,
        "discovered": len(agent.named("stream.discovered")),
        "write_requests": bench.moto.write_requests(moto_log),
        "peak_rss_bytes": rss.peak_bytes,
        "rss_bytes": memory_bytes(agent.pid)["VmRSS"],
    }
