"""The operator's HTTP port, on the agent's event loop: /metrics, /healthz, /status and the page.

A tiny server, to keep dependencies few. The metric definitions live in `streamup.metrics`,
where every room may import them; this module only serves them. Everything it serves is
read-only (GET and HEAD). With a status token, the page and every route that shows streams
(`/`, `/status`, `/throughput`, `/metadata/{stream_id}`) need it; `/metrics` and `/healthz`
stay open for scrapers and probes, and the page's static CSS and script hold no data.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamup.after.metadata import metadata_key
from streamup.errors import StreamupError
from streamup.metrics import REGISTRY
from streamup.models import AgentSnapshot
from streamup.ops.page import STATIC_TYPES, render_page, static_file
from streamup.ops.throughput import Throughput, sample_while

log = structlog.get_logger("streamup")

StatusSource = Callable[[], Awaitable[dict[str, object]]]
# `healthy` while start-up waits for S3 or the checkpoint store: answered 503 "starting".
STARTING = "starting"
# True: healthy; a text: up, but degraded for that reason (answered 200, see `_health`).
HealthSource = Callable[[], Awaitable[bool | str]]
SnapshotSource = Callable[[], AgentSnapshot]
ObjectReader = Callable[[str], Awaitable[bytes | None]]  # key -> body, None when missing

# A health probe or a scraper that stops mid-request must not hold a connection open for ever.
REQUEST_TIMEOUT_S = 5.0
METADATA_TIMEOUT_S = 10.0
TOKEN_COOKIE = "streamup_token"
_STREAM_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Only the page's own script and stylesheet run; no inline script, no other origin, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"

_samplers: set[asyncio.Task[None]] = set()  # kept referenced while they run


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # names lower-cased


@dataclass(frozen=True, slots=True)
class Reply:
    code: str
    ctype: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the answers come from; the agent hands these over, never itself."""

    status: StatusSource
    healthy: HealthSource
    throughput: Throughput | None = None
    read_object: ObjectReader | None = None
    token: str | None = None


def parse_request(head: bytes) -> Request:
    """The request line and headers of one HTTP/1.1 request head (up to the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = urlsplit(rest.split(" ", 1)[0])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(method, unquote(target.path), parse_qs(target.query), headers)


def _cookie(request: Request, name: str) -> str | None:
    for item in request.headers.get("cookie", "").split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value
    return None


def presented_tokens(request: Request) -> list[str]:
    """Every token the request offers: `Authorization: Bearer`, `?token=`, the page's cookie."""
    found = list(request.query.get("token", []))
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(credentials.strip())
    cookie = _cookie(request, TOKEN_COOKIE)
    if cookie is not None:
        found.append(cookie)
    return found


def authorised(request: Request, token: str | None) -> bool:
    """True without a token; with one, when the request offers it (compared in constant time)."""
    if token is None:
        return True
    expected = token.encode()
    return any(hmac.compare_digest(t.encode(), expected) for t in presented_tokens(request))


async def serve_http(
    host: str,
    port: int,
    status: StatusSource,
    healthy: HealthSource,
    *,
    snapshot: SnapshotSource | None = None,
    read_object: ObjectReader | None = None,
    token: str | None = None,
) -> asyncio.Server:
    """Serve the operator's routes; a tiny server, to keep dependencies few.

    It runs on the agent's event loop, so an answer at all means the loop is alive; /healthz
    adds what `healthy` checks (the checkpoint store answers). With `snapshot`, a sampler
    keeps the throughput history the page charts, for as long as the server serves.
    """
    throughput = Throughput() if snapshot is not None else None
    sources = Sources(status, healthy, throughput, read_object, token)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            request = parse_request(head)
            if request.method not in ("GET", "HEAD"):
                reply = Reply(
                    "405 Method Not Allowed", _TEXT, b"GET only\n", (("Allow", "GET, HEAD"),)
                )
            else:
                reply = await route(request, sources)
            writer.write(encode(reply, head_only=request.method == "HEAD"))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    if snapshot is not None and throughput is not None:
        task = asyncio.create_task(sample_while(server.is_serving, snapshot, throughput))
        _samplers.add(task)
        task.add_done_callback(_samplers.discard)
    return server


def encode(reply: Reply, *, head_only: bool = False) -> bytes:
    headers = [
        ("Content-Type", reply.ctype),
        ("Content-Length", str(len(reply.body))),
        ("Connection", "close"),
        *_COMMON_HEADERS,
        *reply.headers,
    ]
    head = f"HTTP/1.1 {reply.code}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + (b"" if head_only else reply.body)


async def route(request: Request, sources: Sources) -> Reply:
    """The answer to one GET (or HEAD) request."""
    path = request.path
    if path == "/metrics":
        return Reply("200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
    if path == "/healthz":
        return await _health(sources.healthy)
    if path.startswith("/static/") and path.removeprefix("/static/") in STATIC_TYPES:
        name = path.removeprefix("/static/")
        return Reply("200 OK", STATIC_TYPES[name], static_file(name))
    if path not in ("/", "/status", "/throughput") and not path.startswith("/metadata/"):
        return Reply("404 Not Found", _TEXT, b"not found\n")
    if not authorised(request, sources.token):
        return Reply(
            "401 Unauthorized", _TEXT,
            b"a status token is needed: Authorization: Bearer <token>, or ?token=<token>\n",
            (("WWW-Authenticate", 'Bearer realm="streamup"'),),
        )  # fmt: skip
    return await _guarded(request, sources)


async def _guarded(request: Request, sources: Sources) -> Reply:
    """The routes that show streams; the request has passed the token check."""
    path = request.path
    if path == "/" and sources.token is not None and request.query.get("token"):
        # The page's own requests carry the token as a cookie, so it never appears in the
        # page, and it leaves the address bar: the browser goes on to the page without it.
        cookie = f"{TOKEN_COOKIE}={sources.token}; Path=/; HttpOnly; SameSite=Strict"
        return Reply(
            "303 See Other", _TEXT, b"see ./\n", (("Location", "./"), ("Set-Cookie", cookie))
        )
    if path == "/throughput":
        return _json("200 OK", _throughput_doc(sources))
    if path.startswith("/metadata/"):
        return await _metadata(path.removeprefix("/metadata/"), sources)
    try:
        doc = await sources.status()
    except Exception as exc:  # a bug here must answer 500, not drop the connection
        log.exception("http.status_failed")
        return _json("500 Internal Server Error", {"error": type(exc).__name__})
    if path == "/status":
        return _json("200 OK", doc)
    return Reply("200 OK", _HTML, render_page(doc, _throughput_doc(sources)).encode())


def _json(code: str, doc: object) -> Reply:
    return Reply(code, _JSON, json.dumps(doc, indent=2, default=str).encode())


def _throughput_doc(sources: Sources) -> dict[str, object]:
    return (sources.throughput or Throughput()).document()


async def _metadata(stream_id: str, sources: Sources) -> Reply:
    """A recent completion's metadata JSON, read from S3 by the agent's own client."""
    missing = Reply("404 Not Found", _TEXT, b"no recent completion has this stream id\n")
    if sources.read_object is None or not _STREAM_ID.fullmatch(stream_id):
        return missing
    try:
        doc: dict[str, Any] = await sources.status()
    except Exception:
        log.exception("http.status_failed")
        return Reply("500 Internal Server Error", _TEXT, b"the status is unavailable\n")
    row = next(
        (
            r
            for r in doc.get("recent_completions") or []
            if r.get("stream_id") == stream_id and r.get("state") == "completed"
        ),
        None,
    )
    if row is None:
        return missing
    try:
        body = await asyncio.wait_for(
            sources.read_object(metadata_key(str(row["key"]))), METADATA_TIMEOUT_S
        )
    except (StreamupError, TimeoutError) as exc:
        log.warning("http.metadata_failed", stream_id=stream_id, error=str(exc))
        return Reply("502 Bad Gateway", _TEXT, b"S3 did not give the metadata; see the log\n")
    if body is None:
        return Reply("404 Not Found", _TEXT, b"the metadata object does not exist\n")
    return Reply("200 OK", _JSON, body)


async def _health(healthy: HealthSource) -> Reply:
    try:
        ok = await healthy()
    except Exception:  # a probe that cannot decide says unhealthy; it never raises
        log.exception("http.health_failed")
        ok = False
    if ok == STARTING:
        return Reply("503 Service Unavailable", _TEXT, b"starting\n")
    if isinstance(ok, str):
        # Degraded (the disk is short): 200, so liveness probes do not restart an agent whose
        # uploads are what frees the disk; the body, /status and streamup_disk_short tell it.
        return Reply("200 OK", _TEXT, f"degraded: {ok}\n".encode())
    if ok:
        return Reply("200 OK", _TEXT, b"ok\n")
    return Reply("503 Service Unavailable", _TEXT, b"unhealthy\n")
