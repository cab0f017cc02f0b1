"""The terminal board and the status table: pure functions, checked with plain tables."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from streamup.models import FileIdentity, Status, StreamRecord, StreamView
from streamup.ops.progress import ProgressLine, RateMeter, display_name, render, sample
from streamup.ops.report import render as render_status

MiB = 1024 * 1024
WATCH = Path("/data/watch")
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("samples", "rate_bytes_s"),
    [
        ([(0.0, 0)], 0.0),  # one sample: no rate yet
        ([(0.0, 0), (1.0, 5 * MiB)], 5 * MiB),
        ([(0.0, 0), (1.0, 5 * MiB), (2.0, 5 * MiB)], 2.5 * MiB),  # parts land in bursts
        ([(float(t), t * MiB) for t in range(11)], MiB),  # steady, longer than the window
        ([(0.0, 0), (1.0, 10 * MiB), (2.0, 5 * MiB)], 2.5 * MiB),  # a part was dropped
        ([(0.0, 10 * MiB), (1.0, 0)], 0.0),  # the upload restarted: never negative
    ],
)
def test_rate_is_bytes_per_second_over_the_window(
    samples: list[tuple[float, int]], rate_bytes_s: float
) -> None:
    meter = RateMeter(window_s=5.0)
    rates = [meter.update("s1", uploaded, now) for now, uploaded in samples]
    assert rates[-1] == pytest.approx(rate_bytes_s)


def test_rate_window_keeps_at_most_the_last_window_of_samples() -> None:
    meter = RateMeter(window_s=5.0)
    for t in range(100):
        meter.update("s1", t * MiB, float(t))
    assert meter.update("s1", 100 * MiB, 100.0) == pytest.approx(MiB)
    assert len(meter._samples["s1"]) <= 7


def test_meter_forgets_streams_that_ended() -> None:
    meter = RateMeter()
    meter.update("gone", 0, 0.0)
    meter.update("kept", 0, 0.0)
    meter.keep_only(["kept"])
    assert list(meter._samples) == ["kept"]


def test_display_name_is_relative_to_the_watch_folder_when_inside_it() -> None:
    assert display_name("/data/watch/cam1/a.mp4", WATCH) == "cam1/a.mp4"
    assert display_name("/elsewhere/a.mp4", WATCH) == "/elsewhere/a.mp4"


def record(path: str, *, uploaded: int, size: int, status: Status = Status.ACTIVE) -> StreamRecord:
    return StreamRecord(
        stream_id=f"id-{path}",
        path=path,
        relative_path=path.removeprefix("/data/watch/"),
        bucket="b",
        key=f"streams/id/{path}",
        status=status,
        identity=FileIdentity(1, 2),
        part_size_bytes=5 * MiB,
        part_size_fixed=False,
        started_at=T0,
        last_activity_at=T0,
        size_bytes=size,
        uploaded_bytes=uploaded,
    )


def test_sample_reads_one_line_per_stream_with_its_rate() -> None:
    first = StreamView(record("/data/watch/cam1/a.mp4", uploaded=0, size=6 * MiB), 0, False)
    meter = RateMeter()
    sample([first], meter, 0.0, WATCH)
    later = StreamView(record("/data/watch/cam1/a.mp4", uploaded=10 * MiB, size=12 * MiB), 2, False)
    (line,) = sample([later], meter, 2.0, WATCH)
    assert line == ProgressLine("cam1/a.mp4", "active", False, 10 * MiB, 12 * MiB, 2, 5 * MiB)
    assert line.percent == pytest.approx(100 * 10 / 12)


def board_text(lines: list[ProgressLine]) -> str:
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(render(lines, WATCH))
    return console.export_text()


def test_board_shows_bytes_rate_and_state_per_stream() -> None:
    text = board_text(
        [
            ProgressLine("cam1/a.mp4", "active", False, 10 * MiB, 12 * MiB, 2, 5 * MiB),
            ProgressLine("cam2/b.mp4", "active", True, 5 * MiB, 20 * MiB, 1, 0.0),
        ]
    )
    lines = text.splitlines()
    assert lines[0] == "streamup: 2 streams, 5.0 MiB/s, watching /data/watch"
    assert (
        " ".join(lines[1].split()) == "cam1/a.mp4 active 10.0 MiB / 12.0 MiB 83% 5.0 MiB/s 2 parts"
    )
    assert "cam2/b.mp4  active (stalled)" in lines[2] and lines[2].rstrip().endswith("1 part")


def test_board_without_streams_says_so() -> None:
    assert board_text([]).strip() == "streamup: watching /data/watch, no streams in progress"


def test_status_table_shows_rows_errors_and_completions() -> None:
    doc = {
        "streams": [
            {
                "state": "active",
                "stalled": True,
                "uploaded_bytes": 5 * MiB,
                "size_bytes": 8 * MiB,
                "lag_bytes": 3 * MiB,
                "parts": 1,
                "last_activity_at_utc": "2026-11-24T12:00:00+00:00",
                "path": "/data/watch/a.mp4",
                "owner": "cam-host:4242",
                "error": "Redis at redis://redis:6379/0: checkpointing part 2 failed",
            }
        ],
        "recent_completions": [
            {
                "state": "completed",
                "size_bytes": 2048,
                "completed_at_utc": "2026-11-24T11:00:00+00:00",
                "path": "/data/watch/old.mp4",
                "key": "streams/x/old.mp4",
            }
        ],
    }
    lines = render_status(doc).splitlines()
    assert lines[0].split()[:3] == ["state", "uploaded", "/"]
    assert lines[1].split()[:10] == [
        "active", "(stalled)", "5.0", "MiB", "/", "8.0", "MiB", "3.0", "MiB", "1"
    ]  # fmt: skip
    assert lines[2] == "    owner: cam-host:4242"
    assert lines[3] == "    error: Redis at redis://redis:6379/0: checkpointing part 2 failed"
    assert lines[5] == "recent completions:"
    assert lines[6].split()[-3:] == ["/data/watch/old.mp4", "->", "streams/x/old.mp4"]
