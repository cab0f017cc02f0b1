"""A real webhook receiver for tests: a threaded http.server on a free loopback port.

It records every request (headers, raw body, the answer it gave) and answers from a rule of the
request and how many times that event id was seen. `stop()` closes the socket (connection
refused, as a receiver that is down) and `start()` opens it again on the same port.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import servers


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    seen: int  # 1 for the first request with this event id, 2 for the second...
    at: float  # time.time() when it arrived

    @property
    def event_id(self) -> str:
        return self.headers.get("X-Streamup-Event-Id", "")

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    def signature_is_valid(self, secret: str) -> bool:
        stamp = self.headers["X-Streamup-Timestamp"]
        mac = hmac.new(secret.encode(), f"{stamp}.".encode() + self.body, hashlib.sha256)
        return hmac.compare_digest(
            self.headers.get("X-Streamup-Signature", ""), f"sha256={mac.hexdigest()}"
        )


Rule = Callable[[int, bytes], int]  # (seen, body) -> HTTP status


def always(status: int) -> Rule:
    return lambda _seen, _body: status


def fail_first(count: int, status: int = 500) -> Rule:
    """`status` to the first `count` attempts of every event, then 200."""
    return lambda seen, _body: status if seen <= count else 200


class Receiver:
    def __init__(self, rule: Rule | None = None) -> None:
        self.rule = rule or always(200)
        self.port = servers.free_port()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/streamup?token=s3cr3t-in-url"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                with receiver._lock:
                    event_id = headers.get("X-Streamup-Event-Id", "")
                    seen = 1 + sum(1 for r in receiver.requests if r.event_id == event_id)
                    status = receiver.rule(seen, body)
                    receiver.requests.append(
                        Request(self.path, headers, body, status, seen, time.time())
                    )
                answer = b'{"ok": true}' if status < 300 else b"<html>try later</html>"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def accepted(self) -> list[Request]:
        return [r for r in self.snapshot() if 200 <= r.status < 300]


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """`streamup status --json`, read from the checkpoint store (agent running or not)."""
    result = subprocess.run(
        [sys.executable, "-m", "streamup", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def outbox_empty(env: dict[str, str]) -> bool:
    events = status_json(env)["events"]
    return bool(events["waiting"] == 0 and events["undeliverable"] == 0)
