"""The end a writer's close announced, confirmed while the end-of-stream check reads
(stream.ending): the pure rule, the confirmation itself on a real file watched through /proc,
and a real `streamup run` whose check overlaps the confirmation."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from streamup.files.source import SourceFile
from streamup.files.writers import WriterIndex
from streamup.models import FileIdentity, FileState
from streamup.stream.ending import end_confirmed
from streamup.stream.lifecycle import (
    WRITER_GONE_CONFIRM_S,
    Activity,
    UnconfirmedEnd,
    may_check,
    should_end,
)
from tests.agent import AgentProcess, MiB, assert_exact, wait_for, wait_metadata, write_slowly


@pytest.mark.parametrize(
    ("idle_s", "seen", "now", "may"),
    [
        (0.0, True, False, True),  # the writer we saw has closed: the check may start at once
        (0.0, True, True, False),  # still held open
        (0.0, True, None, False),  # cannot tell: the idle timeout rules
        (0.0, False, False, False),  # never saw a writer (another host): the idle timeout
        (30.0, False, None, True),  # ... which ends it
    ],
)
def test_may_check(idle_s: float, seen: bool, now: bool | None, may: bool) -> None:
    assert may_check(idle_s, 30.0, writer_seen=seen, writer_now=now) is may


def test_the_check_may_start_before_the_end_is_due() -> None:
    # The early start is exactly the gap between "may check" and "should end".
    assert may_check(0.1, 30.0, writer_seen=True, writer_now=False)
    assert not should_end(0.1, 30.0, writer_seen=True, writer_now=False)


def test_an_unconfirmed_end_holds_only_for_the_very_same_file_state() -> None:
    end = UnconfirmedEnd(Activity(10, 5, 1.0), _state(10, 5), 7)
    assert end.holds(_state(10, 5), 7)
    assert not end.holds(_state(11, 5), 7)  # grew
    assert not end.holds(_state(10, 6), 7)  # rewritten in place
    assert not end.holds(_state(10, 5), 8)  # touched (utime, chmod, a write undone)


def _state(size: int, mtime_ns: int) -> FileState:
    return FileState(FileIdentity(1, 2), size, mtime_ns)


# ------------------------------------------------ the confirmation, on a real file and /proc


def _worker(path: Path) -> Any:
    """What end_confirmed uses of a stream's worker, around a real descriptor and a real /proc
    scan: nothing of the behaviour under test is stood in for."""
    source = SourceFile(str(path))
    state = source.fstat()
    loop_clock = time.monotonic
    worker = SimpleNamespace(
        source=source,
        record=SimpleNamespace(identity=source.identity),
        ctx=SimpleNamespace(
            clock=loop_clock,
            stopping=asyncio.Event(),
            writers=WriterIndex(),
            timeout_s=30.0,
        ),
        check_early=True,
        log=structlog.get_logger("test"),
    )
    worker.unconfirmed_end = UnconfirmedEnd(
        Activity(state.size_bytes, state.mtime_ns, loop_clock()), state, source.ctime_ns()
    )

    async def pause(seconds: float) -> None:
        await asyncio.sleep(seconds)

    worker.pause = pause
    return worker


async def test_an_unchanged_file_is_confirmed_after_the_confirmation_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(os.urandom(1024))
    worker = _worker(path)
    started = time.monotonic()
    assert await end_confirmed(worker)
    assert time.monotonic() - started >= WRITER_GONE_CONFIRM_S * 0.99
    assert worker.unconfirmed_end is None and worker.check_early
    assert await end_confirmed(worker)  # nothing left to confirm: at once


async def test_a_file_written_during_the_confirmation_is_not_ended(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(os.urandom(1024))
    worker = _worker(path)
    later = threading.Timer(0.3, _append, args=(path, b"more"))
    later.start()
    started = time.monotonic()
    assert not await end_confirmed(worker)
    later.join()
    assert time.monotonic() - started < WRITER_GONE_CONFIRM_S
    assert not worker.check_early  # this stream's writer comes back: no more early starts


async def test_a_process_that_opens_it_for_writing_again_is_not_ended(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(os.urandom(1024))
    worker = _worker(path)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        f"import time; f = open({str(path)!r}, 'ab'); print('open', flush=True); time.sleep(30)",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"open\n"
        assert not await end_confirmed(worker)
        assert path.stat().st_size == 1024  # it only opened the file: seen through /proc
        assert not worker.check_early
    finally:
        holder.kill()
        await holder.wait()


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


# ------------------------------------------------------------------ a real agent


def test_the_check_of_a_closed_recording_reads_while_the_close_is_confirmed(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    runner: AgentProcess = agent(LOG_LEVEL="DEBUG", STREAM_TIMEOUT_SECONDS="30")
    path = watch_dir / "cam.mp4"
    with path.open("wb") as handle:
        write_slowly(handle, total_bytes=6 * MiB, rate_bytes_s=16 * MiB)
        wait_for(lambda: runner.events_named("part.uploaded"), deadline_s=20, what="part 1")
        # Held open across writer scans (the agent has seen its writer), written to the end.
        write_slowly(handle, total_bytes=2 * MiB, rate_bytes_s=2 * MiB)
    closed = time.time()
    # The confirmation counts from the last change (the file's mtime), which write_slowly's
    # pacing puts a block's time (~0.12 s) before the close.
    last_write = path.stat().st_mtime
    doc = wait_metadata(s3_client, bucket, "cam.mp4", deadline_s=30)
    assert_exact(s3_client, bucket, doc, path, tmp_path)
    # Ended on the close, long before the 30 s idle timeout, through the early start...
    confirmed = runner.events_named("stream.end_confirmed")
    assert len(confirmed) == 1, runner.log_text()[-3000:]
    assert not runner.events_named("stream.end_unconfirmed")
    checked = runner.events_named("stream.checked")[-1]
    verified = runner.events_named("stream.verified")[-1]
    # ...and still no sooner than the confirmation allows: the check came first, the verdict
    # after the confirmation time without a change.
    assert _t(checked) <= _t(verified)
    assert _t(verified) - last_write >= WRITER_GONE_CONFIRM_S - 0.05
    assert _t(verified) - closed < 10


def _t(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_a_kill_while_the_close_is_confirmed_loses_nothing(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """SIGKILL-like death after the check, before the confirmation (its tail part sent): the
    restarted agent ends the stream again and completes it once, exact."""
    runner: AgentProcess = agent(STREAMUP_CRASH_AT="before_end_confirmed")
    path = watch_dir / "cam.mp4"
    with path.open("wb") as handle:
        write_slowly(handle, total_bytes=6 * MiB, rate_bytes_s=16 * MiB)
        wait_for(lambda: runner.events_named("part.uploaded"), deadline_s=20, what="part 1")
        write_slowly(handle, total_bytes=2 * MiB, rate_bytes_s=2 * MiB)
    proc = runner.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, deadline_s=30, what="the crash")
    assert proc.returncode == 137, runner.log_text()[-2000:]
    assert not runner.events_named("stream.verified")
    again: AgentProcess = agent()
    doc = wait_metadata(s3_client, bucket, "cam.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, path, tmp_path)
    assert len(again.events_named("stream.completed")) == 1
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
