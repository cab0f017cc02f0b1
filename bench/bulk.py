"""Workload 1, bulk: a finished file copied into the watched folder, for a few settings of
UPLOAD_CONCURRENCY x CHUNK_SIZE_BYTES, against `aws s3 cp` and `rclone copyto` of the same file.

streamup's time runs from the start of the copy to `stream.completed` (object complete and its
metadata written), so it includes the end-of-stream detection and the verification pass that
re-reads the whole file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness import PEER_BUCKET, STREAMUP_BUCKET, Agent, Bench, MiB, agent_settings, cpu_seconds
from objects import empty_bucket, metadata_doc, write_random_file
from peers import Peer


def run(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    size = opts.bulk_mib * MiB
    source = bench.workdir / "bulk-source.bin"
    sha = write_random_file(source, size)
    result: dict[str, Any] = {"size_bytes": size, "reps": opts.reps, "streamup": [], "peers": {}}
    for concurrency in opts.concurrency:
        for chunk_mib in opts.chunk_mib:
            settings = agent_settings(concurrency, chunk_mib * MiB)
            result["streamup"].append(streamup_runs(bench, settings, source, sha, opts.reps))
    for peer in bench.peers:
        result["peers"][peer.label] = peer_runs(bench, peer, source, opts.reps)
    result["moto_complete_s"] = {
        "no_checksum": moto_complete_s(bench, source, crc32=False),
        "crc32": moto_complete_s(bench, source, crc32=True),
    }
    source.unlink()
    return result


def streamup_runs(
    bench: Bench, settings: dict[str, str], source: Path, sha: str, reps: int
) -> dict[str, Any]:
    """One agent with these settings; `reps` copies of the file, one after the other."""
    workdir = bench.fresh_dir("bulk-agent")
    agent = Agent(workdir, bench.moto.endpoint, STREAMUP_BUCKET, settings)
    agent.start()
    agent.wait_for("agent.started", deadline_s=60)
    runs = [copy_once(bench, agent, source, sha, f"bulk-{rep}.mp4") for rep in range(reps)]
    agent.stop()
    shutil.rmtree(workdir)
    return {"settings": settings, "command": agent.command(), "runs": runs}


def copy_once(bench: Bench, agent: Agent, source: Path, sha: str, name: str) -> dict[str, Any]:
    size = source.stat().st_size
    target = agent.watch_dir / name
    os.sync()  # the same amount of dirty page cache before every measurement
    agent_cpu, moto_cpu = cpu_seconds(agent.pid), cpu_seconds(bench.moto.pid)
    started = time.time()
    shutil.copyfile(source, target)
    copied = time.time()
    done = agent.wait_for("stream.completed", path=target, deadline_s=120 + size / (5 * MiB))
    agent_cpu, moto_cpu = cpu_seconds(agent.pid) - agent_cpu, cpu_seconds(bench.moto.pid) - moto_cpu
    parts = agent.named("part.uploaded", target)
    verified = agent.named("stream.verified", target)[-1]
    doc = metadata_doc(bench.s3, STREAMUP_BUCKET, done["key"])
    if doc["sha256"] != sha or doc["total_size_bytes"] != size:
        raise AssertionError(f"{name}: the object's metadata does not match the file")
    target.unlink()
    empty_bucket(bench.s3, STREAMUP_BUCKET)
    return {
        "copy_s": copied - started,
        "last_part_s": max(p["t"] for p in parts) - started,
        "verified_s": verified["t"] - started,
        "complete_s": done["t"] - started,
        "cpu_s": agent_cpu,
        "moto_cpu_s": moto_cpu,
        "parts": len(parts),
    }


def peer_runs(bench: Bench, peer: Peer, source: Path, reps: int) -> dict[str, Any]:
    size = source.stat().st_size
    runs = []
    for rep in range(reps):
        key = f"{peer.name}-{rep}.mp4"
        os.sync()
        moto_cpu = cpu_seconds(bench.moto.pid)
        timed = peer.run(source, PEER_BUCKET, key)
        moto_cpu = cpu_seconds(bench.moto.pid) - moto_cpu
        if bench.s3.head_object(Bucket=PEER_BUCKET, Key=key)["ContentLength"] != size:
            raise AssertionError(f"{peer.label} uploaded the wrong number of bytes")
        empty_bucket(bench.s3, PEER_BUCKET)
        runs.append({"complete_s": timed.wall_s, "cpu_s": timed.cpu_s, "moto_cpu_s": moto_cpu})
    command = peer.command("FILE", PEER_BUCKET, "bulk.mp4")
    return {"command": command, "defaults": peer.defaults, "runs": runs}


def moto_complete_s(bench: Bench, source: Path, *, crc32: bool) -> float:
    """How long moto itself takes to CompleteMultipartUpload this file, sent as 8 MiB parts.

    Without a checksum algorithm (streamup, rclone) moto builds a CRC64NVME of the whole object
    in Python; with CRC32 (awscli's default) it combines per-part checksums. That server-side
    difference is in every end-to-end time above, and real S3 has no such cost.
    """
    s3 = bench.s3
    extra = {"ChecksumAlgorithm": "CRC32"} if crc32 else {}
    key = "calibration.bin"
    upload = s3.create_multipart_upload(Bucket=PEER_BUCKET, Key=key, **extra)["UploadId"]
    parts: list[dict[str, Any]] = []
    with source.open("rb") as handle:
        while block := handle.read(8 * MiB):
            number = len(parts) + 1
            sent = s3.upload_part(
                Bucket=PEER_BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=block, **extra
            )
            part = {"PartNumber": number, "ETag": sent["ETag"]}
            if crc32:
                part["ChecksumCRC32"] = sent["ChecksumCRC32"]
            parts.append(part)
    started = time.monotonic()
    s3.complete_multipart_upload(
        Bucket=PEER_BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    elapsed = time.monotonic() - started
    empty_bucket(s3, PEER_BUCKET)
    return elapsed
