"""The webhook sink: each event POSTed to WEBHOOK_URL, signed with WEBHOOK_SECRET when set.

Headers: `X-Streamup-Event-Id`, `X-Streamup-Event-Type`, `X-Streamup-Timestamp` (Unix seconds of
this attempt) and, with a secret, `X-Streamup-Signature: sha256=<hex HMAC-SHA256 of
"{timestamp}.{body}">`. A receiver recomputes the HMAC over the raw body, compares in constant
time, and may refuse old timestamps (replays). aiohttp errors are translated here, once, into an
`Attempt`; the secret is never part of one.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import aiohttp

import streamup
from streamup.after.schedule import Attempt, Outcome, classify_status, parse_retry_after
from streamup.models import OutboxEvent

# Of an error answer's body, this much goes into the log and `status`.
_ERROR_BODY_BYTES = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def request_headers(
    event: OutboxEvent, body: bytes, *, timestamp: int, secret: str | None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"streamup/{streamup.__version__}",
        "X-Streamup-Event-Id": event.event_id,
        "X-Streamup-Event-Type": event.event_type,
        "X-Streamup-Timestamp": str(timestamp),
    }
    if secret is not None:
        headers["X-Streamup-Signature"] = signature(secret, timestamp, body)
    return headers


class WebhookSink:
    """POSTs events to one URL through one pooled aiohttp session."""

    name = "webhook"
    concurrency = 4  # events of different streams in flight at once

    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self.timeout_s = timeout_s
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def accepts(self, event_type: str) -> bool:
        return True

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.concurrency * 2),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(self, event: OutboxEvent) -> Attempt:
        """One POST; its answer as an Attempt (never raises for network trouble)."""
        await self.open()
        assert self._session is not None
        body = event.body.encode("ascii")
        headers = request_headers(event, body, timestamp=int(self._clock()), secret=self._secret)
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                outcome = classify_status(response.status)
                if outcome is Outcome.DELIVERED:
                    return Attempt(outcome)
                snippet = await response.content.read(_ERROR_BODY_BYTES)
                text = " ".join(snippet.decode("utf-8", errors="replace").split())
                reason = f"HTTP {response.status} {response.reason or ''}".rstrip()
                return Attempt(
                    outcome,
                    f"{reason}: {text}" if text else reason,
                    parse_retry_after(response.headers.get("Retry-After")),
                )
        except TimeoutError:
            return Attempt(Outcome.TRANSIENT, f"no answer within {self.timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc}")
