"""The operator's HTTP port: GET /metrics, /healthz and /status, on the agent's event loop.

A tiny server, to keep dependencies few. The metric definitions live in `streamup.metrics`,
where every room may import them; this module only serves them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamup.metrics import REGISTRY

log = structlog.get_logger("streamup")

StatusSource = Callable[[], Awaitable[dict[str, object]]]
# True: healthy; a text: up, but degraded for that reason (answered 200, see `_health`).
HealthSource = Callable[[], Awaitable[bool | str]]
Response = tuple[str, str, bytes]

# A health probe or a scraper that stops mid-request must not hold a connection open for ever.
REQUEST_TIMEOUT_S = 5.0


async def serve_http(
    host: str, port: int, status: StatusSource, healthy: HealthSource
) -> asyncio.Server:
    """Serve GET /metrics, /healthz and /status; a tiny server, to keep dependencies few.

    It runs on the agent's event loop, so an answer at all means the loop is alive; /healthz
    adds what `healthy` checks (the checkpoint store answers).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].decode("latin-1").split("?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                code, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                code, ctype, body = await _route(path, status, healthy)
            head = (
                f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _route(path: str, status: StatusSource, healthy: HealthSource) -> Response:
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    if path == "/healthz":
        return await _health(healthy)
    if path == "/status":
        try:
            doc = await status()
        except Exception as exc:  # a bug here must answer 500, not drop the connection
            log.exception("http.status_failed")
            doc, code = {"error": type(exc).__name__}, "500 Internal Server Error"
        else:
            code = "200 OK"
        return code, "application/json", json.dumps(doc, indent=2, default=str).encode()
    return "404 Not Found", "text/plain", b"not found\n"


async def _health(healthy: HealthSource) -> Response:
    try:
        ok = await healthy()
    except Exception:  # a probe that cannot decide says unhealthy; it never raises
        log.exception("http.health_failed")
        ok = False
    if isinstance(ok, str):
        # Degraded (the disk is short): 200, so liveness probes do not restart an agent whose
        # uploads are what frees the disk; the body, /status and streamup_disk_short tell it.
        return "200 OK", "text/plain", f"degraded: {ok}\n".encode()
    if ok:
        return "200 OK", "text/plain", b"ok\n"
    return "503 Service Unavailable", "text/plain", b"unhealthy\n"
