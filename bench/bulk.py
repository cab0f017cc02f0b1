"""Workload 1, bulk: a finished file put into the watched folder, for each file size, against
`aws s3 cp` and `rclone copyto` of the same file and the server's own ceiling.

For each size: the ceiling (moto accepting the file's bytes from parallel in-memory UploadParts,
calibrate.py), measured before streamup's copies and again after them; streamup for a few
settings of UPLOAD_CONCURRENCY x CHUNK_SIZE_BYTES in the proof mode the server needs
(`S3_INTEGRITY_MODE=auto`: the start-up probe decides), then each forced mode asked for
(`checksum` by default: no MD5 at all) at the fastest of those settings; the peers; moto's
CompleteMultipartUpload of the file alone, for each checksum.

streamup's time runs from the file's arrival (a rename into the folder, or the start of a copy
into it: `--bulk-arrivals`) to `stream.completed` (object complete and its metadata written), so
it includes the end-of-stream detection and the end-of-stream check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import calibrate
import profiling
from harness import PEER_BUCKET, STREAMUP_BUCKET, Agent, Bench, MiB, agent_settings, cpu_seconds
from objects import empty_bucket, metadata_doc, write_random_file
from peers import Peer

COMPLETE_PART_BYTES = 8 * MiB


def run(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"reps": opts.reps, "arrivals": opts.bulk_arrivals, "sizes": []}
    for number, size_mib in enumerate(opts.bulk_mib):
        profile_dir = opts.results if number == 0 and opts.profile else None
        result["sizes"].append(one_size(bench, opts, size_mib * MiB, profile_dir))
    return result


def one_size(
    bench: Bench, opts: argparse.Namespace, size: int, profile_dir: Path | None
) -> dict[str, Any]:
    source = bench.workdir / "bulk-source.bin"
    sha = write_random_file(source, size)
    result: dict[str, Any] = {"size_bytes": size, "streamup": [], "peers": {}}
    result["ceiling"] = calibrate.ceiling(bench, source, opts.ceiling_in_flight, opts.reps)
    for concurrency in opts.concurrency:
        for chunk_mib in opts.chunk_mib:
            settings = agent_settings(concurrency, chunk_mib * MiB)
            result["streamup"].append(
                streamup_runs(bench, settings, source, sha, opts.reps, opts.bulk_arrivals[0])
            )
    fastest = min(result["streamup"], key=lambda c: median_of(c["runs"], "complete_s"))
    for mode in opts.bulk_modes:
        settings = {**fastest["settings"], "S3_INTEGRITY_MODE": mode}
        result["streamup"].append(streamup_runs(bench, settings, source, sha, opts.reps))
    for arrival in opts.bulk_arrivals[1:]:
        result["streamup"].append(
            streamup_runs(bench, fastest["settings"], source, sha, opts.reps, arrival)
        )
    # Measured again after streamup's copies, which it brackets: moto's throughput drifts as its
    # process ages over a run, and the ceiling's time must be the same server's as streamup's.
    result["ceiling"] = calibrate.ceiling(
        bench, source, opts.ceiling_in_flight, opts.reps, earlier=result["ceiling"]
    )
    for peer in bench.peers:
        result["peers"][peer.label] = peer_runs(bench, peer, source, opts.reps)
    spans = calibrate.file_spans(size, COMPLETE_PART_BYTES)
    result["moto_complete"] = {
        "part_bytes": COMPLETE_PART_BYTES,
        "kinds": calibrate.complete_kinds(
            bench, source, spans, list(calibrate.CHECKSUMS), opts.reps
        ),
    }
    if profile_dir is not None and profiling.py_spy() is not None:
        result["profile"] = profile_run(bench, fastest["settings"], source, sha, profile_dir)
    source.unlink()
    return result


def median_of(runs: list[dict[str, Any]], name: str) -> float:
    return float(statistics.median(r[name] for r in runs))


def start_agent(bench: Bench, settings: dict[str, str]) -> tuple[Agent, Path]:
    """A fresh agent with these settings, started; the proof mode its probe chose is logged."""
    workdir = bench.fresh_dir("bulk-agent")
    agent = Agent(workdir, bench.moto.endpoint, STREAMUP_BUCKET, settings)
    agent.start()
    agent.wait_for("agent.started", deadline_s=60)
    return agent, workdir


def streamup_runs(
    bench: Bench,
    settings: dict[str, str],
    source: Path,
    sha: str,
    reps: int,
    arrival: str = "move",
) -> dict[str, Any]:
    """One agent with these settings; `reps` arrivals of the file, one after the other."""
    agent, workdir = start_agent(bench, settings)
    integrity = agent.named("s3.integrity")[-1]
    runs = [copy_once(bench, agent, source, sha, f"bulk-{rep}.mp4", arrival) for rep in range(reps)]
    agent.stop()
    shutil.rmtree(workdir)
    return {
        "arrival": arrival,
        "settings": settings,
        "command": agent.command(),
        "mode": integrity["mode"],
        "configured_mode": integrity["configured"],
        "runs": runs,
    }


def copy_once(
    bench: Bench, agent: Agent, source: Path, sha: str, name: str, arrival: str = "move"
) -> dict[str, Any]:
    """The file arrives in the watched folder and goes up. `move`: written beside the folder
    (same filesystem) and synced before the clock starts, then renamed in: a finished file, as
    `aws s3 cp` reads one. `copy`: copied in while the clock runs (the copy, and the writeback of
    its pages, are inside the time)."""
    size = source.stat().st_size
    target = agent.watch_dir / name
    staged = agent.workdir / name
    if arrival == "move":
        shutil.copyfile(source, staged)
    os.sync()  # the same amount of dirty page cache before every measurement
    agent_cpu, moto_cpu = cpu_seconds(agent.pid), cpu_seconds(bench.moto.pid)
    started = time.time()
    if arrival == "move":
        os.rename(staged, target)
    else:
        shutil.copyfile(source, target)
    copied = time.time()
    done = agent.wait_for("stream.completed", path=target, deadline_s=120 + size / (5 * MiB))
    agent_cpu, moto_cpu = cpu_seconds(agent.pid) - agent_cpu, cpu_seconds(bench.moto.pid) - moto_cpu
    parts = agent.named("part.uploaded", target)
    verified = agent.named("stream.verified", target)[-1]
    checked = agent.named("stream.checked", target)[-1]
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
        "skipped_bytes": checked["skipped_bytes"],
        "reread_bytes": checked["reread_bytes"],
        "integrity_proof": doc.get("integrity_proof"),
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


def profile_run(
    bench: Bench, settings: dict[str, str], source: Path, sha: str, out_dir: Path
) -> dict[str, Any]:
    """One more copy (not among the figures) with py-spy sampling the agent and moto."""
    agent, workdir = start_agent(bench, settings)
    raw = {who: out_dir / f"profile-{who}.txt" for who in ("agent", "moto")}
    with (
        profiling.recording(agent.pid, raw["agent"]),
        profiling.recording(bench.moto.pid, raw["moto"]),
    ):
        measured = copy_once(bench, agent, source, sha, "bulk-profiled.mp4")
    seconds = measured["complete_s"]  # idle samples are left out: the wait to attach adds none
    agent.stop()
    shutil.rmtree(workdir)
    return {
        "settings": settings,
        "size_bytes": source.stat().st_size,
        "run": measured,
        "raw_files": {who: str(path) for who, path in raw.items()},
        "agent": profiling.summarise(raw["agent"], seconds, profiling.AGENT_CATEGORIES, "streamup"),
        "moto": profiling.summarise(raw["moto"], seconds, profiling.MOTO_CATEGORIES, "moto"),
    }
