"""Every Prometheus metric in one place, plus the small HTTP server for /metrics, /healthz, /status.

No metric carries a per-stream label: a label per recording would grow without bound.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

BYTES_UPLOADED = Counter(
    "streamup_bytes_uploaded", "Bytes acknowledged by S3 in parts", registry=REGISTRY
)
PARTS_UPLOADED = Counter("streamup_parts_uploaded", "Parts acknowledged by S3", registry=REGISTRY)
PARTS_REUPLOADED = Counter(
    "streamup_parts_reuploaded",
    "Parts sent again because the writer changed their bytes after they were uploaded",
    registry=REGISTRY,
)
PART_SECONDS = Histogram(
    "streamup_part_upload_seconds",
    "Time to upload one part, retries included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
RETRIES = Counter(
    "streamup_retries", "Transient errors that were retried", ["kind"], registry=REGISTRY
)
COMPLETIONS = Counter(
    "streamup_streams_completed", "Streams completed with their metadata", registry=REGISTRY
)
FAILURES = Counter(
    "streamup_stream_failures",
    "Stream steps that failed permanently",
    ["status"],
    registry=REGISTRY,
)
STREAMS_ACTIVE = Gauge("streamup_streams_active", "Streams being uploaded", registry=REGISTRY)
STREAMS_STALLED = Gauge(
    "streamup_streams_stalled", "Streams waiting on S3 or the checkpoint store", registry=REGISTRY
)
UPLOAD_LAG = Gauge(
    "streamup_upload_lag_bytes", "Bytes on disk not yet acknowledged by S3", registry=REGISTRY
)

StatusSource = Callable[[], Awaitable[dict[str, object]]]
HealthSource = Callable[[], Awaitable[bool]]


async def serve_http(
    host: str, port: int, status: StatusSource, healthy: HealthSource
) -> asyncio.Server:
    """Serve GET /metrics, /healthz and /status; a tiny server, to keep dependencies few."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else "/"
            code, ctype, body = await _route(path.split("?", 1)[0], status, healthy)
            head = (
                f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _route(path: str, status: StatusSource, healthy: HealthSource) -> tuple[str, str, bytes]:
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    if path == "/healthz":
        ok = await healthy()
        return (
            ("200 OK" if ok else "503 Service Unavailable"),
            "text/plain",
            (b"ok\n" if ok else b"unhealthy\n"),
        )
    if path == "/status":
        body = json.dumps(await status(), indent=2, default=str).encode()
        return "200 OK", "application/json", body
    return "404 Not Found", "text/plain", b"not found\n"
