"""The agent's small HTTP server, on a real socket: routes, methods, and faults in its sources."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from prometheus_client import generate_latest

from streamup import metrics
from streamup.ops.http import serve_http


async def ask(server: asyncio.Server, request: bytes) -> tuple[str, bytes]:
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def serve(
    status: Callable[[], Awaitable[dict[str, object]]], healthy: Callable[[], Awaitable[bool]]
) -> asyncio.Server:
    return await serve_http("127.0.0.1", 0, status, healthy)


async def fine_status() -> dict[str, object]:
    return {"streams": []}


async def broken() -> dict[str, object]:
    raise RuntimeError("a bug")


async def is_healthy() -> bool:
    return True


async def is_not_healthy() -> bool:
    return False


async def cannot_tell() -> bool:
    raise RuntimeError("a bug")


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_routes_answer_with_their_documents() -> None:
    server = await serve(fine_status, is_healthy)
    async with server:
        assert await ask(server, get("/healthz")) == ("HTTP/1.1 200 OK", b"ok\n")
        line, body = await ask(server, get("/status?pretty=1"))
        assert (line, json.loads(body)) == ("HTTP/1.1 200 OK", {"streams": []})
        line, body = await ask(server, get("/metrics"))
        assert line == "HTTP/1.1 200 OK" and b"streamup_bytes_uploaded_total" in body
        assert (await ask(server, get("/nope")))[0] == "HTTP/1.1 404 Not Found"
        post = b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await ask(server, post))[0] == "HTTP/1.1 405 Method Not Allowed"
        head = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert await ask(server, head) == ("HTTP/1.1 200 OK", b"")


async def test_healthz_is_503_when_unhealthy_or_when_the_check_itself_fails() -> None:
    for healthy in (is_not_healthy, cannot_tell):
        server = await serve(fine_status, healthy)
        async with server:
            assert await ask(server, get("/healthz")) == (
                "HTTP/1.1 503 Service Unavailable",
                b"unhealthy\n",
            )


async def test_a_failing_status_source_answers_500_and_the_server_keeps_serving() -> None:
    server = await serve(broken, is_healthy)
    async with server:
        line, body = await ask(server, get("/status"))
        assert line == "HTTP/1.1 500 Internal Server Error"
        assert json.loads(body) == {"error": "RuntimeError"}
        assert (await ask(server, get("/healthz")))[0] == "HTTP/1.1 200 OK"


def test_failure_and_retry_series_exist_before_the_first_failure() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'streamup_stream_failures_total{status="failed_s3_complete"}' in text
    assert 'streamup_retries_total{kind="CheckpointError"}' in text
