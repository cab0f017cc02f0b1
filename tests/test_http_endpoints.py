"""The agent's small HTTP server, on a real socket: routes, methods, and faults in its sources."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from prometheus_client import generate_latest

from streamup import metrics
from streamup.errors import StorageError
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


# ---------------------------------------------------------------- the status page's routes

TOKEN = "page-token-0123456789"
STREAM_ID = "5b0c4a8e-0d3e-4f7a-9a53-3d1f0c2b9e11"
HOSTILE = "<img src=x onerror=alert(1)>.mp4"


async def ask_with_headers(
    server: asyncio.Server, request: bytes
) -> tuple[str, dict[str, str], bytes]:
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return line, headers, body


def get_with(path: str, **headers: str) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def status_with_a_completion() -> dict[str, object]:
    return {
        "agent_id": "a", "store": "sqlite", "store_error": None,
        "streams": [{"stream_id": "s1", "path": f"/w/{HOSTILE}", "state": "active",
                     "uploaded_bytes": 1, "size_bytes": 2, "lag_bytes": 1, "parts": 1}],
        "recent_completions": [
            {"stream_id": STREAM_ID, "path": "/w/done.mp4", "state": "completed",
             "key": f"streams/{STREAM_ID}/done.mp4", "size_bytes": 9, "end_reason": "idle"},
            {"stream_id": STREAM_ID.replace("5", "6"), "path": "/w/none.mp4",
             "state": "aborted_no_parts", "key": "streams/x/none.mp4", "size_bytes": 0},
        ],
    }  # fmt: skip


class Objects:
    """A stand-in for the S3 client's `get_bytes`: a dict of keys, or an error to raise."""

    def __init__(self, objects: dict[str, bytes], error: Exception | None = None) -> None:
        self.objects, self.error, self.asked = objects, error, list[str]()

    async def get_bytes(self, key: str) -> bytes | None:
        self.asked.append(key)
        if self.error is not None:
            raise self.error
        return self.objects.get(key)


async def test_the_page_is_served_with_a_strict_content_security_policy() -> None:
    server = await serve_http("127.0.0.1", 0, status_with_a_completion, is_healthy)
    async with server:
        line, headers, body = await ask_with_headers(server, get("/"))
        assert line == "HTTP/1.1 200 OK"
        assert headers["content-type"] == "text/html; charset=utf-8"
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert HOSTILE.encode() not in body and b"&lt;img src=x onerror=alert(1)&gt;.mp4" in body
        for name, ctype in (("page.js", "text/javascript"), ("page.css", "text/css")):
            line, headers, body = await ask_with_headers(server, get(f"/static/{name}"))
            assert line == "HTTP/1.1 200 OK" and headers["content-type"].startswith(ctype)
            assert len(body) > 1000
        assert (await ask(server, get("/static/page.html")))[0] == "HTTP/1.1 404 Not Found"
        assert (await ask(server, get("/static/../http.py")))[0] == "HTTP/1.1 404 Not Found"
        line, body = await ask(server, get("/throughput"))
        assert line == "HTTP/1.1 200 OK" and json.loads(body)["history_bytes_s"] == []


async def test_with_a_token_the_page_status_and_metadata_need_it_and_metrics_stay_open() -> None:
    objects = Objects({f"streams/{STREAM_ID}/done.mp4.metadata.json": b'{"ok": 1}'})
    server = await serve_http(
        "127.0.0.1", 0, status_with_a_completion, is_healthy,
        read_object=objects.get_bytes, token=TOKEN,
    )  # fmt: skip
    async with server:
        for path in ("/", "/status", "/throughput", f"/metadata/{STREAM_ID}", "/?token=nope"):
            line, headers, body = await ask_with_headers(server, get(path))
            assert line == "HTTP/1.1 401 Unauthorized", path
            assert headers["www-authenticate"] == 'Bearer realm="streamup"'
            assert TOKEN.encode() not in body and b"active" not in body
        assert objects.asked == []  # nothing was read for a refused request
        assert (await ask(server, get("/metrics")))[0] == "HTTP/1.1 200 OK"
        assert await ask(server, get("/healthz")) == ("HTTP/1.1 200 OK", b"ok\n")
        assert (await ask(server, get("/static/page.js")))[0] == "HTTP/1.1 200 OK"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/", "/status", "/throughput", f"/metadata/{STREAM_ID}"):
            assert (await ask(server, get_with(path, **bearer)))[0] == "HTTP/1.1 200 OK", path
        line, body = await ask(server, get(f"/status?token={TOKEN}"))
        assert line == "HTTP/1.1 200 OK" and json.loads(body)["agent_id"] == "a"
        # The page opened with ?token= hands it over as a cookie and drops it from the address.
        line, headers, _ = await ask_with_headers(server, get(f"/?token={TOKEN}"))
        assert (line, headers["location"]) == ("HTTP/1.1 303 See Other", "./")
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"streamup_token={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        line, _, body = await ask_with_headers(server, get_with("/", Cookie=cookie.split(";")[0]))
        assert line == "HTTP/1.1 200 OK" and TOKEN.encode() not in body


async def test_the_metadata_route_serves_only_recent_completions_from_the_object_store() -> None:
    document = b'{"stream_id": "%s"}' % STREAM_ID.encode()
    objects = Objects({f"streams/{STREAM_ID}/done.mp4.metadata.json": document})
    server = await serve_http(
        "127.0.0.1", 0, status_with_a_completion, is_healthy, read_object=objects.get_bytes
    )
    async with server:
        line, headers, body = await ask_with_headers(server, get(f"/metadata/{STREAM_ID}"))
        assert (line, headers["content-type"], body) == (
            "HTTP/1.1 200 OK",
            "application/json",
            document,
        )
        assert objects.asked == [f"streams/{STREAM_ID}/done.mp4.metadata.json"]
        unknown = STREAM_ID.replace("5", "7")
        aborted = STREAM_ID.replace("5", "6")  # no object, so no metadata
        for stream_id in (unknown, aborted, "../../etc/passwd", "s1", ""):
            line, _ = await ask(server, get(f"/metadata/{stream_id}"))
            assert line == "HTTP/1.1 404 Not Found", stream_id
        assert len(objects.asked) == 1
        objects.objects.clear()  # the document is not there (yet)
        assert (await ask(server, get(f"/metadata/{STREAM_ID}")))[0] == "HTTP/1.1 404 Not Found"
        objects.error = StorageError("reading: Network: secret-ish detail", retryable=True)
        line, body = await ask(server, get(f"/metadata/{STREAM_ID}"))
        assert line == "HTTP/1.1 502 Bad Gateway" and b"secret-ish" not in body


async def test_the_page_answers_500_when_its_status_source_fails() -> None:
    server = await serve_http("127.0.0.1", 0, broken, is_healthy)
    async with server:
        assert (await ask(server, get("/")))[0] == "HTTP/1.1 500 Internal Server Error"
        assert (await ask(server, get("/healthz")))[0] == "HTTP/1.1 200 OK"
