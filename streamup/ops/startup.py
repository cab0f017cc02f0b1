"""What the operator sees while the agent waits at start-up for S3 or its checkpoint store.

A server that answered 503 is busy, not unreachable; one that refused the connection is not
up yet. Each is said once, in those words, when it starts (an episode: the step and what
happened), not once per attempt; the end of the wait is said too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from streamup import metrics
from streamup.errors import StorageError, StreamupError

log = structlog.get_logger("streamup")

Note = Callable[[StreamupError, int, float], None]


def happened(exc: StreamupError, endpoint: str, store: str) -> str:
    """What the server did, in words: "S3 at X answered 503 SlowDown"."""
    if isinstance(exc, StorageError):
        return f"S3 at {endpoint} {exc.happened or 'failed'}"
    return f"the {store} checkpoint store is not available ({exc})"


def _kind(exc: StreamupError, what: str) -> str:
    """The episode a failure belongs to: a busy server alternating 500 and 503 is one episode;
    refusing the connection, then answering 503, is two."""
    if isinstance(exc, StorageError) and exc.happened.startswith("answered "):
        return "answered"
    return what


class StartupWait:
    """The start-up's waiting episodes: one log line each, and the last error for the exit."""

    def __init__(self, endpoint: str, store: str) -> None:
        self.endpoint = endpoint
        self.store = store
        self.last = ""  # what happened last, for the message if start-up gives up
        self._episode: tuple[str, str] | None = None
        self._since: float | None = None
        self.attempts = 0
        self.opened = False  # start-up went through
        self.step = ""  # the step being tried now

    def begin(self, step: str) -> str:
        """Start-up tries `step` now (for the message if it gives up before any answer)."""
        self.step = step
        return step

    def given_up(self) -> str:
        """What start-up was waiting for when its time ran out."""
        if self.last:
            return self.last
        where = self.endpoint if self.step != "checkpoint store" else f"the {self.store} store"
        return f"{self.step}: no answer yet from {where}"

    @property
    def waiting(self) -> bool:
        return self._since is not None

    def note(self, step: str) -> Note:
        """An `on_retry` for `retrying`: a transient failure of `step` (which begins now)."""
        self.begin(step)

        def noted(exc: StreamupError, attempt: int, delay_s: float) -> None:
            metrics.RETRIES.labels(kind=type(exc).__name__).inc()
            what = happened(exc, self.endpoint, self.store)
            self.last = f"{step}: {what} ({exc})"
            self.attempts += 1
            if self._since is None:
                self._since = time.monotonic()
            episode = (step, _kind(exc, what))
            if self._episode != episode:
                self._episode = episode
                log.warning(
                    "agent.waiting", step=step, happened=what, error=str(exc),
                    retry_in_s=round(delay_s, 1),
                )  # fmt: skip

        return noted

    def over(self) -> None:
        """Start-up went through: say so if it had to wait."""
        self.opened = True
        if self._since is not None:
            waited_s = time.monotonic() - self._since
            log.info("agent.done_waiting", waited_s=round(waited_s, 1), attempts=self.attempts)
            self._since = None
