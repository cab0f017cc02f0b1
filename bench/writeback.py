"""moto's CompleteMultipartUpload with and without a just-written file's pages still dirty.

Workload 2 times moto's completion of the agent's upload right after the writer closed a 2 GiB
recording, while the kernel still writes it back; moto's completion "alone" runs seconds later.
moto writes the completed object to a temporary file on the same disk, so the two are not
timed on the same machine state. This measures the difference by itself, with no agent at all:
the same object completed by boto3, interleaved, once on a clean page cache (`sync` first) and
once right after a file of the same size was written and closed (what a recording leaves).

    .venv/bin/python bench/writeback.py --mib 2048 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import calibrate
from harness import PEER_BUCKET, Bench, MiB, moto_server
from objects import s3_client

BLOCK_BYTES = 64 * MiB
PART_BYTES = 10 * MiB  # workload 2's parts


def write_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        for _ in range(size // BLOCK_BYTES):
            handle.write(os.urandom(BLOCK_BYTES))


def dirty_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) // 1024
    return -1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=2048, help="object size, MiB")
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args(argv)
    size = opts.mib * MiB // BLOCK_BYTES * BLOCK_BYTES
    spans = [(o, min(PART_BYTES, size - o)) for o in range(0, size, PART_BYTES)]
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="streamup-writeback-") as scratch:
        work = Path(scratch)
        source = work / "object.bin"
        write_file(source, size)
        with moto_server(work) as moto:
            s3 = s3_client(moto.endpoint)
            s3.create_bucket(Bucket=PEER_BUCKET)
            bench = Bench(moto, s3, work, [])
            for rep in range(opts.reps):
                for dirty in (False, True):
                    os.sync()
                    if dirty:
                        write_file(work / "recording.bin", size)
                    at_start = dirty_mib()
                    took = calibrate.complete_alone(bench, source, spans, "crc32c")["complete_s"]
                    times[dirty].append(took)
                    (work / "recording.bin").unlink(missing_ok=True)
                    print(f"rep {rep + 1}: {'after a fresh file' if dirty else 'clean'}: "
                          f"{took:.1f} s (dirty when its parts began: {at_start} MiB)",
                          flush=True)  # fmt: skip
    clean, dirty = (statistics.median(times[k]) for k in (False, True))
    print(f"\n| page cache | moto's CompleteMultipartUpload of {opts.mib} MiB, s |\n|---|---|")
    for label, key in (("clean (`sync` first)", False), ("a same-size file just written", True)):
        spread = f"{min(times[key]):.1f}-{max(times[key]):.1f}"
        print(f"| {label} | {statistics.median(times[key]):.1f} ({spread}) |")
    print(f"\nmedians of {opts.reps}: {dirty - clean:+.1f} s with the fresh file's pages dirty")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
