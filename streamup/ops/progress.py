"""Live progress for `streamup run` on a terminal: one line per stream, refreshed every second.

The board reads the agent's workers on its own timer and is never on the upload path: a slow
terminal costs the agent this task's time, nothing more. Log events stay visible: on a terminal
the log lines are printed through the same rich console, which puts them above the board.
Off a terminal there is no board at all (the logs are JSON lines for a collector).
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO, cast

import structlog
from rich.console import Console, Group, JustifyMethod
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamup.models import AgentSnapshot, StreamView
from streamup.ops.report import human_size

REFRESH_S = 1.0
# Parts land whole (5 MiB or more at once), so a rate over one refresh would jump between zero
# and a burst; averaging over a few seconds reads steadily.
RATE_WINDOW_S = 5.0


def terminal_console(stream: IO[str] | None = None) -> Console | None:
    """A rich console on stderr when it is a terminal, else None (no board, JSON logs)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    return Console(file=stream)


def log_file_for(console: Console) -> TextIO:
    """A file for structlog that prints each log line through `console` (above the board)."""
    # FileProxy is an io.TextIOBase; structlog only calls its write() and flush().
    return cast(TextIO, FileProxy(console, console.file))


@dataclass(frozen=True, slots=True)
class ProgressLine:
    """What the board shows of one stream."""

    name: str
    state: str
    stalled: bool
    uploaded_bytes: int
    size_bytes: int
    parts: int
    rate_bytes_s: float

    @property
    def percent(self) -> float:
        return 100.0 * self.uploaded_bytes / self.size_bytes if self.size_bytes else 0.0


class RateMeter:
    """Upload rate per stream from samples of its uploaded bytes; time is passed in (`now`)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def update(self, stream_id: str, uploaded_bytes: int, now: float) -> float:
        """Record a sample; bytes per second over the window (0 until two samples exist)."""
        samples = self._samples.setdefault(stream_id, deque())
        samples.append((now, uploaded_bytes))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        first_s, first_bytes = samples[0]
        elapsed_s = now - first_s
        if elapsed_s <= 0:
            return 0.0
        # Dropped parts (a file that shrank) lower the count; a rate is never negative.
        return max(0.0, (uploaded_bytes - first_bytes) / elapsed_s)

    def keep_only(self, stream_ids: Iterable[str]) -> None:
        """Forget streams that ended, so the meter does not grow over a long run."""
        alive = set(stream_ids)
        for stream_id in [s for s in self._samples if s not in alive]:
            del self._samples[stream_id]


def display_name(path: str, watch_dir: Path) -> str:
    try:
        return Path(path).relative_to(watch_dir).as_posix()
    except ValueError:
        return path


def sample(
    views: Iterable[StreamView], meter: RateMeter, now: float, watch_dir: Path
) -> list[ProgressLine]:
    """One board's worth of lines, read from a snapshot of the streams (no I/O)."""
    views = list(views)
    lines = []
    for view in views:
        record = view.record
        lines.append(
            ProgressLine(
                name=display_name(record.path, watch_dir),
                state=record.status.value,
                stalled=view.stalled,
                uploaded_bytes=record.uploaded_bytes,
                size_bytes=max(record.size_bytes, record.uploaded_bytes),
                parts=view.parts,
                rate_bytes_s=meter.update(record.stream_id, record.uploaded_bytes, now),
            )
        )
    meter.keep_only(v.record.stream_id for v in views)
    return lines


def render(lines: list[ProgressLine], watch_dir: Path) -> Group:
    """The board: a summary line, then one row per stream."""
    total_rate = sum(line.rate_bytes_s for line in lines)
    if lines:
        summary = (
            f"streamup: {len(lines)} stream{'s' if len(lines) != 1 else ''}, "
            f"{human_size(total_rate)}/s, watching {watch_dir}"
        )
    else:
        summary = f"streamup: watching {watch_dir}, no streams in progress"
    table = Table.grid(padding=(0, 2))
    justifies: tuple[JustifyMethod, ...] = ("left", "left", "right", "right", "right", "right")
    for justify in justifies:
        table.add_column(justify=justify)
    for line in lines:
        state = Text(line.state, style="green")
        if line.stalled:
            state = Text(f"{line.state} (stalled)", style="bold red")
        table.add_row(
            Text(line.name, overflow="ellipsis", no_wrap=True),
            state,
            f"{human_size(line.uploaded_bytes)} / {human_size(line.size_bytes)}",
            f"{line.percent:3.0f}%",
            f"{human_size(line.rate_bytes_s)}/s",
            f"{line.parts} part{'s' if line.parts != 1 else ''}",
        )
    return Group(Text(summary, style="bold"), table)


async def show_progress(
    snapshot: Callable[[], AgentSnapshot], console: Console, *, refresh_s: float = REFRESH_S
) -> None:
    """Repaint the board every `refresh_s` until cancelled; a rendering fault ends only this."""
    meter = RateMeter()
    loop = asyncio.get_running_loop()
    try:
        with Live(console=console, auto_refresh=False, transient=True) as live:
            while True:
                view = snapshot()
                watch_dir = Path(view.watch_dir)
                lines = sample(view.streams, meter, loop.time(), watch_dir)
                live.update(render(lines, watch_dir), refresh=True)
                await asyncio.sleep(refresh_s)
    except asyncio.CancelledError:
        raise
    except Exception:
        # The board is a convenience; the agent goes on without it.
        structlog.get_logger("streamup").exception("progress.failed")
