"""Benchmarks of streamup against `aws s3 cp` and `rclone copyto` on one local moto S3 server.

    .venv/bin/python bench/run.py [--reps N] [--workloads bulk,durable,many,folders] ...

Each workload writes its raw results to bench/results/<workload>.json, the whole run to
bench/results/run.json; the run writes the summary to docs/benchmarks.md (`python
bench/report.py` renders it again from run.json). `--help` lists the sizes, all adjustable.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bulk
import durable
import folders
import machine
import many
import peers
import report
from harness import (
    PEER_BUCKET,
    Bench,
    cpu_seconds,
    machine_busy_seconds,
    memory_bytes,
    moto_command,
    moto_server,
    own_seconds,
)
from objects import s3_client

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"bulk": bulk.run, "durable": durable.run, "many": many.run, "folders": folders.run}


def numbers(kind: type) -> Any:
    """argparse type: a comma-separated list of numbers."""
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--workloads", type=lambda t: t.split(","), default=list(WORKLOADS),
        help="comma-separated subset of: " + ", ".join(WORKLOADS))  # fmt: skip
    add("--reps", type=int, default=3, help="repetitions of workloads 1 and 2 (default 3)")
    add("--bulk-mib", type=numbers(int), default=[1024, 400],
        help="bulk file sizes, MiB (default 1024,400); the first is profiled")  # fmt: skip
    add(
        "--bulk-arrivals",
        type=lambda t: [a for a in t.split(",") if a],
        default=["move", "copy"],
        help="how the file arrives in the watched folder: move (renamed in, already written and "
        "synced, as aws reads it) or copy (copied in while the clock runs); the first for every "
        "setting, the others at the fastest (default move,copy)",
    )
    add("--bulk-modes", type=lambda t: [m for m in t.split(",") if m], default=["checksum"],
        help="S3_INTEGRITY_MODE values forced beside auto, at the fastest setting "
             "(default checksum)")  # fmt: skip
    add("--ceiling-in-flight", type=numbers(int), default=[4, 8],
        help="in-memory UploadParts in flight for the server ceiling (default 4,8)")  # fmt: skip
    add(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="py-spy the agent and moto during one more bulk copy, if py-spy is installed",
    )
    add("--concurrency", type=numbers(int), default=[4, 8],
        help="UPLOAD_CONCURRENCY values tried in workload 1 (default 4,8)")  # fmt: skip
    add("--chunk-mib", type=numbers(int), default=[8, 16],
        help="CHUNK_SIZE_BYTES values tried in workload 1, MiB (default 8,16)")  # fmt: skip
    add("--durable-mib", type=numbers(int), default=[2048, 512],
        help="recording sizes of workload 2, MiB (default 2048,512)")  # fmt: skip
    add("--durable-rate-mib", type=float, default=50, help="recording rate, MiB/s (default 50)")
    add("--durable-concurrency", type=int, default=4, help="UPLOAD_CONCURRENCY (default 4)")
    add("--durable-chunk-mib", type=int, default=10, help="CHUNK_SIZE_BYTES, MiB (default 10)")
    add("--streams", type=int, default=100, help="files growing at once (default 100)")
    add("--stream-rate-mib", type=float, default=1, help="rate of each, MiB/s (default 1)")
    add("--stream-seconds", type=float, default=30, help="how long they grow (default 30)")
    add("--many-concurrency", type=int, default=4, help="UPLOAD_CONCURRENCY (default 4)")
    add("--many-chunk-mib", type=int, default=10, help="CHUNK_SIZE_BYTES, MiB (default 10)")
    add("--many-downloads", type=int, default=3, help="objects downloaded to compare (default 3)")
    add("--folder-files", type=int, default=10_000, help="files of workload 4 (default 10000)")
    add("--folder-file-kib", type=int, default=16, help="size of each, KiB (default 16)")
    add("--folder-watch-s", type=float, default=15,
        help="how long the second start is watched, s (default 15: three scans)")  # fmt: skip
    add("--workdir", type=Path, help="scratch folder (default: a new one under /tmp)")
    add("--moto-spool", type=lambda t: Path(t) if t not in ("", "none") else None,
        default=None,
        help="moto's TMPDIR, where it keeps part and object bodies over 8 MiB (default: the "
             "system's temporary folder, on the disk the agent's checkpoints and the "
             "recordings share; /dev/shm keeps moto's writes off it, as a remote server's "
             "would be: the agent's fsyncs then never wait behind them, and moto's 2 GiB "
             "completion varies less, but it takes moto more CPU)")  # fmt: skip
    add("--results", type=Path, default=ROOT / "bench" / "results", help="raw results folder")
    add("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="summary to write")
    opts = parser.parse_args(argv)
    unknown = set(opts.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return opts


def measure(bench: Bench, name: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Run one workload; note how much CPU other processes on the machine took meanwhile."""
    busy, ours = machine_busy_seconds(), own_seconds() + cpu_seconds(bench.moto.pid)
    started = time.monotonic()
    outcome = WORKLOADS[name](bench, opts)
    ours = own_seconds() + cpu_seconds(bench.moto.pid) - ours
    outcome["machine_load"] = {
        "wall_s": time.monotonic() - started,
        "busy_cpu_s": machine_busy_seconds() - busy,
        "other_processes_cpu_s": max(0.0, machine_busy_seconds() - busy - ours),
    }
    return outcome


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    started, clock = datetime.now(UTC), time.monotonic()
    opts.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamup-bench-", dir=opts.workdir) as scratch:
        workdir = Path(scratch).resolve()
        with moto_server(workdir, opts.moto_spool) as moto:
            s3 = s3_client(moto.endpoint)
            s3.create_bucket(Bucket=PEER_BUCKET)
            bench = Bench(moto, s3, workdir, peers.available(moto.endpoint))
            found = ", ".join(p.label for p in bench.peers) or "none"
            print(f"moto at {moto.endpoint}; peers: {found}; scratch {workdir}", flush=True)
            results: dict[str, Any] = {
                "argv": shlex.join(["bench/run.py", *argv]),
                "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine.describe(bench.peers),
                "moto_command": shlex.join(["python", *moto_command(0)[1:-1], "PORT"]),
                "moto_spool": str(opts.moto_spool) if opts.moto_spool else None,
                "workloads": {},
            }
            for name in opts.workloads:
                print(f"[{time.monotonic() - clock:6.0f} s] {name} ...", flush=True)
                outcome = measure(bench, name, opts)
                results["workloads"][name] = outcome
                (opts.results / f"{name}.json").write_text(json.dumps(outcome, indent=2) + "\n")
            results["moto_peak_rss_bytes"] = memory_bytes(moto.pid)["VmHWM"]
    results["duration_s"] = time.monotonic() - clock
    (opts.results / "run.json").write_text(json.dumps(results, indent=2) + "\n")
    opts.doc.parent.mkdir(parents=True, exist_ok=True)
    opts.doc.write_text(report.render(results))
    print(f"[{results['duration_s']:6.0f} s] wrote {opts.doc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
