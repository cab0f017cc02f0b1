"""Recognition: what a start costs after the checkpoint store was lost, against uploading again.

Files (one large, many small, in folders) are uploaded by a real agent, which is stopped; its
SQLite file is deleted and the agent started again over the same folder and bucket. Every file
must be recognised (`stream.recognised`), none uploaded (no `stream.discovered`, no write
request reaching moto but the start-up probe's: what it found was in the lost STATE_DIR).
Reported: the first pass (the upload), the second (recognition), both wall time and the agent's
CPU-s, and the write requests moto saw. Then a finished file whose upload is killed half-way,
with the SQLite file deleted: how many of its parts the next start takes up (stream.adoption)
and how many it sends.

    .venv/bin/python bench/recognise.py --mib 1024 --files 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import STREAMUP_BUCKET, Agent, Bench, MiB, cpu_seconds, moto_server
from objects import metadata_doc, s3_client, sha256_file

BLOCK_BYTES = 64 * MiB


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        left = size
        while left:
            handle.write(os.urandom(min(left, BLOCK_BYTES)))
            left -= min(left, BLOCK_BYTES)


def lose_the_store(agent: Agent) -> None:
    """The agent's SQLite file deleted while it does not run."""
    for name in ("streamup.db", "streamup.db-wal", "streamup.db-shm"):
        (agent.workdir / "state" / name).unlink(missing_ok=True)


def drop_page_cache() -> bool:
    """Whether the files' pages could be dropped (root on a host kernel); else they are read
    from memory, the best case."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def one_pass(agent: Agent, event: str, count: int, bench: Bench) -> dict[str, Any]:
    requests_before = bench.moto.log_offset()
    started = agent.start()
    agent.wait_for(event, count=count, deadline_s=900)
    last = max(e["t"] for e in agent.named(event))
    result = {
        "wall_s": last - started,
        "cpu_s": cpu_seconds(agent.pid),
        "write_requests": bench.moto.write_requests(requests_before, but_probes=True),
        "discovered": len(agent.named("stream.discovered")),
        "recognised": len(agent.named("stream.recognised")),
    }
    agent.stop()
    return result


def killed_mid_upload(agent: Agent, mib: int, bench: Bench) -> dict[str, Any]:
    """A finished file of `mib` MiB, the agent SIGKILLed once half its parts are in S3 and its
    SQLite file deleted; the next start takes the upload up (stream.adoption)."""
    target = agent.watch_dir / "killed.mp4"
    write_random(target, mib * MiB)
    agent.settings["LOG_LEVEL"] = "DEBUG"  # part.uploaded
    about = mib * MiB // int(agent.settings["CHUNK_SIZE_BYTES"])  # parts, at the first size
    agent.start()
    agent.wait_for("part.uploaded", path=target, count=max(1, about // 2), deadline_s=600)
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait()
    lose_the_store(agent)
    started = agent.start()
    done = agent.wait_for("stream.completed", path=target, deadline_s=600)
    [reconciled] = agent.named("stream.reconciled", target)
    sent = len(agent.named("part.uploaded", target))
    agent.stop()
    doc = metadata_doc(bench.s3, agent.bucket, done["key"])
    return {
        "parts": len(doc["chunks"]),
        "sha256_ok": doc["sha256"] == sha256_file(target),
        "adopted": reconciled["adopted"],
        "sent_again": sent,
        "wall_s": done["t"] - started,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="the large file, MiB")
    parser.add_argument("--files", type=int, default=200, help="small files (1 MiB each)")
    opts = parser.parse_args(argv)
    settings = {
        "UPLOAD_CONCURRENCY": "4",
        "CHUNK_SIZE_BYTES": str(8 * MiB),
        "STREAM_TIMEOUT_SECONDS": "2",
        "SCAN_INTERVAL_SECONDS": "5",
        "LOG_LEVEL": "INFO",
    }
    with tempfile.TemporaryDirectory(prefix="streamup-recognise-") as scratch:
        work = Path(scratch)
        with moto_server(work) as moto:
            s3 = s3_client(moto.endpoint)
            s3.create_bucket(Bucket=STREAMUP_BUCKET)
            bench = Bench(moto, s3, work, [])
            agent = Agent(work / "agent", moto.endpoint, STREAMUP_BUCKET, settings)
            write_random(agent.watch_dir / "large.mp4", opts.mib * MiB)
            for index in range(opts.files):
                write_random(agent.watch_dir / f"day{index // 100:02d}/clip{index:04d}.mp4", MiB)
            count = opts.files + 1
            upload = one_pass(agent, "stream.completed", count, bench)
            lose_the_store(agent)
            cold = drop_page_cache()
            again = one_pass(agent, "stream.recognised", count, bench)
            killed = killed_mid_upload(agent, opts.mib, bench)
    read_from = "from disk (page cache dropped)" if cold else "from the page cache"
    print(f"\n{opts.mib} MiB + {opts.files} x 1 MiB files, moto on this machine; the second"
          f" pass read the files {read_from}\n")  # fmt: skip
    print("| pass | wall s | agent CPU-s | write requests | discovered | recognised |")
    print("|---|---|---|---|---|---|")
    rows = (("upload (store intact)", upload), ("start after the store was lost", again))
    for label, row in rows:
        print(f"| {label} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['write_requests']} "
              f"| {row['discovered']} | {row['recognised']} |")  # fmt: skip
    print(f"\nA finished {opts.mib} MiB file, the agent SIGKILLed with half its parts in S3"
          f" and the SQLite file deleted: the next start took {killed['adopted']} of"
          f" {killed['parts']} parts up and sent {killed['sent_again']}; complete"
          f" {killed['wall_s']:.1f} s after the start")  # fmt: skip
    quiet = again["discovered"] == 0 and again["write_requests"] == 0
    whole = killed["sha256_ok"] and killed["adopted"] + killed["sent_again"] == killed["parts"]
    return 0 if quiet and whole else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
