"""Upload throughput over the last minutes, for the status page; kept here, not in the agent.

A sampler reads two things once a second: the process's `streamup_bytes_uploaded_total` counter
(every byte S3 acknowledged, including the last part of a stream that has just ended and parts
sent again) for the agent's figure and its history, and the agent's snapshot for each stream's
own rate. `Throughput` is a pure accumulator (time is passed in); `sample_while` is its timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

import structlog

from streamup.metrics import REGISTRY
from streamup.models import AgentSnapshot, StreamView
from streamup.ops.progress import RATE_WINDOW_S, RateMeter

SAMPLE_EVERY_S = 1.0
HISTORY_S = 300.0  # the chart's span: five minutes
_AGENT = "\x00agent"  # the meter's key for the whole agent; no stream id looks like it


def uploaded_bytes_total() -> float:
    """Bytes S3 has acknowledged since this process started (the Prometheus counter)."""
    return REGISTRY.get_sample_value("streamup_bytes_uploaded_total") or 0.0


class Throughput:
    """The agent's rate now, its recent history, and each live stream's rate."""

    def __init__(
        self,
        *,
        every_s: float = SAMPLE_EVERY_S,
        history_s: float = HISTORY_S,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.every_s = every_s
        self.capacity = max(2, round(history_s / every_s))
        self._history: deque[float] = deque(maxlen=self.capacity)
        self._agent = RateMeter(window_s)
        self._streams = RateMeter(window_s)
        self.stream_rates: dict[str, float] = {}

    def add(self, now: float, uploaded_total: float, streams: Iterable[StreamView]) -> None:
        """One sample: the counter's value and the live streams at monotonic time `now`."""
        views = list(streams)
        self._history.append(self._agent.update(_AGENT, round(uploaded_total), now))
        self.stream_rates = {
            v.record.stream_id: self._streams.update(
                v.record.stream_id, v.record.uploaded_bytes, now
            )
            for v in views
        }
        self._streams.keep_only(self.stream_rates)

    def document(self) -> dict[str, object]:
        """What the page shows: `history_bytes_s` oldest first, one value per `interval_s`."""
        history = list(self._history)
        return {
            "interval_s": self.every_s,
            "capacity": self.capacity,
            "rate_bytes_s": history[-1] if history else 0.0,
            "peak_bytes_s": max(history, default=0.0),
            "history_bytes_s": history,
            "streams": dict(self.stream_rates),
        }


async def sample_while(
    serving: Callable[[], bool],
    snapshot: Callable[[], AgentSnapshot],
    throughput: Throughput,
    *,
    total: Callable[[], float] = uploaded_bytes_total,
) -> None:
    """Sample every `throughput.every_s` while `serving()` holds; a fault ends only this."""
    loop = asyncio.get_running_loop()
    try:
        while serving():
            throughput.add(loop.time(), total(), snapshot().streams)
            await asyncio.sleep(throughput.every_s)
    except asyncio.CancelledError:
        raise
    except Exception:
        # The chart is a convenience; the agent and the rest of the page go on without it.
        structlog.get_logger("streamup").exception("http.throughput_failed")
