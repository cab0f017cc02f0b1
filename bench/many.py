"""Workload 3, many streams: files growing at once, each at a steady rate, with 10 MiB parts.

Every object is checked (the metadata's SHA-256 against the local file, and a sample
downloaded); the agent's RSS is sampled every 0.2 s and its CPU read from /proc.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness import (
    STREAMUP_BUCKET,
    Agent,
    Bench,
    GiB,
    MiB,
    RssSampler,
    agent_settings,
    cpu_seconds,
    memory_bytes,
)
from objects import empty_bucket, metadata_doc, sha256_file, sha256_object

TICK_S = 0.1
RSS_TARGET_BYTES = 250 * MiB
_POOL_BYTES = 64 * MiB


def run(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    settings = agent_settings(opts.many_concurrency, opts.many_chunk_mib * MiB, LOG_LEVEL="INFO")
    workdir = bench.fresh_dir("many-agent")
    agent = Agent(workdir, bench.moto.endpoint, STREAMUP_BUCKET, settings)
    agent.start()
    agent.wait_for("agent.started", deadline_s=60)
    paths = [agent.watch_dir / f"cam{i:03d}.mp4" for i in range(opts.streams)]
    per_file = int(opts.stream_rate_mib * MiB * opts.stream_seconds)
    os.sync()
    cpu, moto_cpu = cpu_seconds(agent.pid), cpu_seconds(bench.moto.pid)
    with RssSampler(agent.pid) as rss:
        started = time.time()
        closed = write_together(paths, per_file, opts.stream_seconds, os.urandom(_POOL_BYTES))
        agent.wait_for("stream.completed", count=len(paths), deadline_s=300 + len(paths))
    cpu, moto_cpu = cpu_seconds(agent.pid) - cpu, cpu_seconds(bench.moto.pid) - moto_cpu
    completed, verified = agent.named("stream.completed"), agent.named("stream.verified")
    exact, downloaded = check_objects(bench, completed, paths, per_file, opts.many_downloads)
    result = {
        "streams": len(paths),
        "rate_bytes_s": opts.stream_rate_mib * MiB,
        "write_s": closed - started,
        "total_bytes": per_file * len(paths),
        "command": agent.command(),
        "last_complete_after_close_s": max(e["t"] for e in completed) - closed,
        "cpu_s": cpu,
        "cpu_s_per_gib": cpu / (per_file * len(paths) / GiB),
        "moto_cpu_s": moto_cpu,
        "first_verified_after_close_s": min(e["t"] for e in verified) - closed,
        "peak_rss_bytes": rss.peak_bytes,
        "peak_rss_writing_bytes": max((b for t, b in rss.samples if t <= closed), default=0),
        "peak_rss_after_close_bytes": max((b for t, b in rss.samples if t > closed), default=0),
        "rss_samples": [(round(t - started, 2), b) for t, b in rss.samples],
        "vmhwm_bytes": memory_bytes(agent.pid)["VmHWM"],
        "rss_target_bytes": RSS_TARGET_BYTES,
        "exact_objects": exact,
        "downloaded_and_matched": downloaded,
    }
    agent.stop()
    shutil.rmtree(workdir)
    empty_bucket(bench.s3, STREAMUP_BUCKET)
    return result


def write_together(paths: list[Path], per_file: int, seconds: float, pool: bytes) -> float:
    """Grow every file by the same amount each tick, then close them all; the epoch of the
    last close. Each file reads the pool at its own offsets, so no two files are alike."""
    view = memoryview(pool)
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
    written = [0] * len(paths)
    ticks = max(1, round(seconds / TICK_S))
    started = time.monotonic()
    for tick in range(1, ticks + 1):
        goal = per_file * tick // ticks
        for index, fd in enumerate(fds):
            while written[index] < goal:
                length = goal - written[index]
                offset = (index * 1_000_003 + written[index] * 7) % (len(pool) - length)
                written[index] += os.write(fd, view[offset : offset + length])
        delay = started + tick * TICK_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for fd in fds:
        os.close(fd)
    return time.time()


def check_objects(
    bench: Bench, completed: list[dict[str, Any]], paths: list[Path], size: int, downloads: int
) -> tuple[int, int]:
    """(objects whose metadata matches the local file, sampled objects downloaded and equal)."""
    key_of = {e["path"]: e["key"] for e in completed}
    exact = downloaded = 0
    for index, path in enumerate(paths):
        key = key_of[str(path)]
        local = sha256_file(path)
        doc = metadata_doc(bench.s3, STREAMUP_BUCKET, key)
        if doc["sha256"] == local and doc["total_size_bytes"] == size:
            exact += 1
        if index < downloads and sha256_object(bench.s3, STREAMUP_BUCKET, key) == local:
            downloaded += 1
    return exact, downloaded
