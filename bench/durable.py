"""Workload 2, time to durable: a recording written at a steady rate into the watched folder.

The figure is the time from the writer's close to the complete object with its metadata, for
two file sizes. The peer is what one does without streamup: wait for the end, then
`aws s3 cp` the finished file; its whole upload counts from the same close.

After each recording, moto's own CompleteMultipartUpload of that object (the same bytes in the
same parts, with the COMPOSITE CRC32C streamup asks for) is timed alone (calibrate.py): the
target is close → durable within a few seconds of that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import calibrate
from harness import PEER_BUCKET, STREAMUP_BUCKET, Agent, Bench, MiB, agent_settings, cpu_seconds
from objects import empty_bucket, metadata_doc, sha256_file

WRITE_BLOCK_BYTES = 1 * MiB
_POOL_BYTES = 64 * MiB


def run(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    settings = agent_settings(opts.durable_concurrency, opts.durable_chunk_mib * MiB)
    workdir = bench.fresh_dir("durable-agent")
    agent = Agent(workdir, bench.moto.endpoint, STREAMUP_BUCKET, settings)
    agent.start()
    agent.wait_for("agent.started", deadline_s=60)
    pool = os.urandom(_POOL_BYTES)
    peers = [p for p in bench.peers if p.name == "aws"]
    result: dict[str, Any] = {
        "rate_bytes_s": opts.durable_rate_mib * MiB,
        "reps": opts.reps,
        "command": agent.command(),
        "mode": agent.named("s3.integrity")[-1]["mode"],
        "peer_commands": {p.label: p.command("FILE", PEER_BUCKET, "recording.mp4") for p in peers},
        "sizes": [],
    }
    for size_mib in opts.durable_mib:
        runs = []
        for rep in range(opts.reps):
            target = agent.watch_dir / f"recording-{size_mib}-{rep}.mp4"
            size = size_mib * MiB
            measured, spans = record_once(bench, agent, target, size, opts.durable_rate_mib, pool)
            alone = calibrate.complete_alone(bench, target, spans, "crc32c")
            measured["moto_complete_s"] = alone["complete_s"]
            measured["over_moto_complete_s"] = measured["durable_s"] - alone["complete_s"]
            for peer in peers:
                os.sync()
                measured[f"after_end_s[{peer.label}]"] = peer.run(
                    target, PEER_BUCKET, target.name
                ).wall_s
                empty_bucket(bench.s3, PEER_BUCKET)
            target.unlink()
            empty_bucket(bench.s3, STREAMUP_BUCKET)
            runs.append(measured)
        result["sizes"].append({"size_bytes": size_mib * MiB, "runs": runs})
    agent.stop()
    shutil.rmtree(workdir)
    return result


def record_once(
    bench: Bench, agent: Agent, target: Path, size: int, rate_mib: float, pool: bytes
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Write the recording, wait for its object; times are counted from the writer's close.
    Also the object's parts as (offset, length), from its metadata."""
    os.sync()
    cpu = cpu_seconds(agent.pid)
    opened = time.time()
    closed = write_steadily(target, size, rate_mib * MiB, pool)
    done = agent.wait_for("stream.completed", path=target, deadline_s=120 + size / (5 * MiB))
    cpu = cpu_seconds(agent.pid) - cpu
    parts = agent.named("part.uploaded", target)
    verified = agent.named("stream.verified", target)[-1]
    checked = agent.named("stream.checked", target)[-1]
    doc = metadata_doc(bench.s3, STREAMUP_BUCKET, done["key"])
    if doc["sha256"] != sha256_file(target) or doc["total_size_bytes"] != size:
        raise AssertionError(f"{target.name}: the object's metadata does not match the file")
    measured = {
        "write_s": closed - opened,
        "uploaded_at_close_bytes": sum(p["size_bytes"] for p in parts if p["t"] <= closed),
        "verified_s": verified["t"] - closed,
        "completion_s": done["t"] - verified["t"],
        "durable_s": done["t"] - closed,
        # CompleteMultipartUpload as the agent timed it: the rest is the agent's own time.
        "agent_complete_s": done["server_complete_s"],
        "outside_complete_s": done["t"] - closed - done["server_complete_s"],
        "cpu_s": cpu,
        "skipped_bytes": checked["skipped_bytes"],
        "reread_bytes": checked["reread_bytes"],
    }
    return measured, part_spans(doc["chunks"])


def part_spans(chunks: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(offset, length) of an object's parts from its metadata's `chunks`."""
    spans, offset = [], 0
    for chunk in sorted(chunks, key=lambda c: c["part_number"]):
        spans.append((offset, chunk["size_bytes"]))
        offset += chunk["size_bytes"]
    return spans


def write_steadily(path: Path, size: int, rate_bytes_s: float, pool: bytes) -> float:
    """A recorder that appends `size` bytes at `rate_bytes_s`, then closes the file.

    Blocks come from a random pool at shifting offsets. Returns the epoch time of the close.
    """
    view = memoryview(pool)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    started = time.monotonic()
    written = 0
    while written < size:
        length = min(WRITE_BLOCK_BYTES, size - written)
        offset = (written // WRITE_BLOCK_BYTES * 4099 * 1024) % (len(pool) - length)
        written += os.write(fd, view[offset : offset + length])
        delay = started + written / rate_bytes_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    os.close(fd)
    return time.time()
