"""The server's side of the figures: what moto itself does, timed alone in the same run.

- **ceiling**: how fast moto accepts the bytes of a file from parallel UploadParts whose bodies
  are already in memory, N in flight on a thread pool, each thread with its own boto3 client
  that adds no checksum and signs no payload (`UNSIGNED-PAYLOAD`): as little client work as an
  upload can take, so the bound for every tool on this server.
- **completion**: how long moto's CompleteMultipartUpload of an object takes by itself, for each
  checksum a client can ask for. moto builds the object in Python, in time that grows with its
  size; the parts are sent first (untimed), then the completion alone is timed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import crc32c
from botocore.config import Config
from harness import ACCESS_KEY, PEER_BUCKET, REGION, SECRET_KEY, Bench, MiB, cpu_seconds
from objects import empty_bucket

CEILING_PART_BYTES = 8 * MiB
# Part uploads of the completion calibrations run this many at a time (only the completion is
# timed, so this only shortens the run).
SEND_THREADS = 8


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class Checksum:
    """One way of asking for a whole-object checksum: what CreateMultipartUpload says, what each
    UploadPart carries, what each part of the CompleteMultipartUpload lists."""

    label: str
    create: dict[str, str]
    algorithm: str | None  # the part field's suffix (ChecksumCRC32C ...), None: parts carry none

    def part_digest(self, body: bytes) -> str | None:
        if self.algorithm == "CRC32C":
            return b64(crc32c.crc32c(body).to_bytes(4, "big"))
        if self.algorithm == "CRC32":
            return b64(zlib.crc32(body).to_bytes(4, "big"))
        return None


# What each tool sends. Without awscrt no CRC64NVME of a part can be computed here (nor by
# botocore), so its parts go without one: moto does not check part checksums, and its
# completion work (the whole object, once more) is the same either way.
CHECKSUMS = {
    "none": Checksum("no checksum algorithm (rclone; streamup before issue 12)", {}, None),
    "crc32": Checksum(
        "COMPOSITE CRC32 (awscli's default)", {"ChecksumAlgorithm": "CRC32"}, "CRC32"
    ),
    "crc32c": Checksum(
        "COMPOSITE CRC32C (streamup)",
        {"ChecksumAlgorithm": "CRC32C", "ChecksumType": "COMPOSITE"},
        "CRC32C",
    ),
    "crc64nvme": Checksum(
        "FULL_OBJECT CRC64NVME",
        {"ChecksumAlgorithm": "CRC64NVME", "ChecksumType": "FULL_OBJECT"},
        None,
    ),
}


def upload_client(endpoint: str, connections: int) -> Any:
    """boto3 with the least client work: no checksum of its own, UNSIGNED-PAYLOAD, no retries."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1},
            max_pool_connections=connections,
            s3={"addressing_style": "path", "payload_signing_enabled": False},
        ),
    )


class Senders:
    """`threads` boto3 clients, each used by one thread at a time: at most `threads` in flight."""

    def __init__(self, endpoint: str, threads: int) -> None:
        self.threads = threads
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(threads):
            self._idle.put(upload_client(endpoint, 2))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="calibrate")

    def __enter__(self) -> Senders:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown()

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        client = self._idle.get()
        try:
            yield client
        finally:
            self._idle.put(client)

    def map(self, call: Callable[[Any, int], dict[str, Any]], count: int) -> list[dict[str, Any]]:
        """call(client, i) for i in 0..count-1 on the pool; results in order."""

        def one(i: int) -> dict[str, Any]:
            with self._client() as client:
                return call(client, i)

        return list(self._pool.map(one, range(count)))


def file_spans(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """(offset, length) of fixed-size parts of a file of `size` bytes."""
    return [(at, min(part_bytes, size - at)) for at in range(0, size, part_bytes)]


# ---------------------------------------------------------------------- the ceiling


def ceiling(
    bench: Bench,
    source: Path,
    in_flight: list[int],
    reps: int,
    *,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds moto takes to accept every byte of `source` as 8 MiB in-memory UploadParts, for
    each number in flight (interleaved), `reps` times each. `earlier`: a ceiling measured before
    (the same sizes and numbers in flight), whose repetitions count with these (each run says
    which measurement it belongs to, `round`)."""
    size = source.stat().st_size
    with source.open("rb") as handle:
        bodies = [handle.read(length) for _, length in file_spans(size, CEILING_PART_BYTES)]
    by_in_flight: dict[str, list[dict[str, float]]] = {str(n): [] for n in in_flight}
    if earlier is not None:
        by_in_flight = {n: list(runs) for n, runs in earlier["by_in_flight"].items()}
    earlier_rounds = [r.get("round", 0) for runs in by_in_flight.values() for r in runs]
    round_ = 1 + max(earlier_rounds, default=-1)
    senders = {n: Senders(bench.moto.endpoint, n) for n in in_flight}
    try:
        for _ in range(reps):
            for n in in_flight:
                run = accept_once(bench, senders[n], bodies)
                by_in_flight[str(n)].append({**run, "round": round_})
    finally:
        for pool in senders.values():
            pool.close()
    best = min(statistics.median(r["accept_s"] for r in runs) for runs in by_in_flight.values())
    return {
        "size_bytes": size,
        "part_bytes": CEILING_PART_BYTES,
        "by_in_flight": by_in_flight,
        "best_accept_s": best,
        "best_mib_s": size / MiB / best,
    }


def accept_once(bench: Bench, senders: Senders, bodies: list[bytes]) -> dict[str, float]:
    """One multipart upload of `bodies` (aborted after): the UploadParts alone are timed."""
    key = "ceiling.bin"
    upload = bench.s3.create_multipart_upload(Bucket=PEER_BUCKET, Key=key)["UploadId"]

    def send(client: Any, i: int) -> dict[str, Any]:
        client.upload_part(Bucket=PEER_BUCKET, Key=key, UploadId=upload,
                           PartNumber=i + 1, Body=bodies[i])  # fmt: skip
        return {}

    moto_cpu = cpu_seconds(bench.moto.pid)
    started = time.monotonic()
    senders.map(send, len(bodies))
    elapsed = time.monotonic() - started
    moto_cpu = cpu_seconds(bench.moto.pid) - moto_cpu
    bench.s3.abort_multipart_upload(Bucket=PEER_BUCKET, Key=key, UploadId=upload)
    return {"accept_s": elapsed, "moto_cpu_s": moto_cpu}


# ---------------------------------------------------------------------- completion alone


def complete_alone(
    bench: Bench, source: Path, spans: list[tuple[int, int]], kind: str
) -> dict[str, Any]:
    """Send `source` as parts (offset, length) with checksum `kind`, then time moto's
    CompleteMultipartUpload alone; what moto then reports as the object's checksum."""
    checksum = CHECKSUMS[kind]
    s3, key = bench.s3, f"complete-{kind}.bin"
    upload = s3.create_multipart_upload(Bucket=PEER_BUCKET, Key=key, **checksum.create)["UploadId"]
    fd = os.open(source, os.O_RDONLY)
    try:

        def send(client: Any, i: int) -> dict[str, Any]:
            offset, length = spans[i]
            body = os.pread(fd, length, offset)
            digest = checksum.part_digest(body)
            extra = {} if digest is None else {f"Checksum{checksum.algorithm}": digest}
            sent = client.upload_part(Bucket=PEER_BUCKET, Key=key, UploadId=upload,
                                      PartNumber=i + 1, Body=body, **extra)  # fmt: skip
            return {"PartNumber": i + 1, "ETag": sent["ETag"], **extra}

        with Senders(bench.moto.endpoint, SEND_THREADS) as senders:
            parts = senders.map(send, len(spans))
    finally:
        os.close(fd)
    moto_cpu = cpu_seconds(bench.moto.pid)
    started = time.monotonic()
    s3.complete_multipart_upload(
        Bucket=PEER_BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    elapsed = time.monotonic() - started
    moto_cpu = cpu_seconds(bench.moto.pid) - moto_cpu
    head = s3.head_object(Bucket=PEER_BUCKET, Key=key, ChecksumMode="ENABLED")
    reported = {k: v for k, v in head.items() if k.startswith("Checksum")}
    empty_bucket(s3, PEER_BUCKET)
    return {
        "complete_s": elapsed,
        "moto_cpu_s": moto_cpu,
        "parts": len(spans),
        "reported": reported,
        "checked": _check_reported(kind, reported, parts, source),
    }


def _check_reported(
    kind: str, reported: dict[str, str], parts: list[dict[str, Any]], source: Path
) -> str:
    """Is the whole-object checksum moto reports the one the algorithm gives?"""
    algorithm = CHECKSUMS[kind].algorithm
    if algorithm is not None:  # COMPOSITE: the checksum of the parts' checksums
        joined = b"".join(base64.b64decode(p[f"Checksum{algorithm}"]) for p in parts)
        whole = crc32c.crc32c(joined) if algorithm == "CRC32C" else zlib.crc32(joined)
        expected = b64(whole.to_bytes(4, "big"))
        got = reported.get(f"Checksum{algorithm}", "").split("-")[0]
        return "the parts' composite" if got == expected else f"{got}, not {expected}"
    got = reported.get("ChecksumCRC64NVME")
    if got is None:
        return "none reported"
    if len(base64.b64decode(got)) == 8:
        return "a 64-bit value"
    whole = 0
    with source.open("rb") as handle:
        while block := handle.read(16 * MiB):
            whole = zlib.crc32(block, whole)
    if got == b64(whole.to_bytes(4, "big")):
        return "32 bits: the object's CRC32 under the CRC64NVME name (moto without awscrt)"
    return "32 bits, not the object's CRC32"


def complete_kinds(
    bench: Bench, source: Path, spans: list[tuple[int, int]], kinds: list[str], reps: int
) -> dict[str, Any]:
    """complete_alone `reps` times for each kind, the kinds interleaved."""
    found: dict[str, Any] = {kind: {"label": CHECKSUMS[kind].label, "runs": []} for kind in kinds}
    for _ in range(reps):
        for kind in kinds:
            found[kind]["runs"].append(complete_alone(bench, source, spans, kind))
    return found
