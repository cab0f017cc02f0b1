"""Closes after writing from inotify (files.closes): the event parser, the watch on a real folder
tree, and a real `streamup run` that ends a copied-in file on its close instead of waiting out
a 30 s idle timeout."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

from streamup.files.closes import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_TO,
    CloseWatch,
    parse_events,
)
from tests.agent import AgentProcess, MiB, assert_exact, wait_for, wait_metadata


def _event(wd: int, mask: int, name: bytes, padded: int) -> bytes:
    return struct.pack("iIII", wd, mask, 0, padded) + name.ljust(padded, b"\0")


def test_parse_events_reads_every_event_with_its_padded_name() -> None:
    buffer = (
        _event(1, IN_CLOSE_WRITE, b"cam.mp4", 16)
        + _event(2, IN_CREATE | IN_ISDIR, b"day-2", 16)
        + _event(1, IN_MOVED_TO, b"", 0)
    )
    assert parse_events(buffer) == [
        (1, IN_CLOSE_WRITE, "cam.mp4"),
        (2, IN_CREATE | IN_ISDIR, "day-2"),
        (1, IN_MOVED_TO, ""),
    ]
    assert parse_events(buffer[:10]) == []  # a torn header is not an event


async def _wait(condition: Any, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "no close event"
        await asyncio.sleep(0.02)


async def test_closes_and_renames_into_place_are_seen_in_new_folders_too(tmp_path: Path) -> None:
    seen: list[str] = []
    watch = CloseWatch(tmp_path, (".mp4",), on_close=seen.append)
    assert watch.start()
    try:
        copied = tmp_path / "cam.mp4"
        with copied.open("wb") as handle:
            handle.write(b"x" * 1000)
            await asyncio.sleep(0.1)
            assert str(copied) not in seen  # still open: no close yet
        await _wait(lambda: str(copied) in seen)
        assert watch.closed_after(str(copied), copied.stat().st_mtime_ns)
        # A later write makes that close old news.
        with copied.open("ab") as handle:
            handle.write(b"y")
            handle.flush()
            assert not watch.closed_after(str(copied), copied.stat().st_mtime_ns)
        # A folder made after the start, a file renamed into place there from a temporary name.
        day = tmp_path / "day-2"
        day.mkdir()
        await _wait(lambda: str(day) in watch._folders.values())  # watched as it appeared
        temporary = day / "next.mp4.part"
        temporary.write_bytes(b"z" * 100)
        final = day / "next.mp4"
        temporary.rename(final)
        await _wait(lambda: str(final) in seen)
        assert str(temporary) not in seen  # not a candidate: never woken for it
        assert watch.closed_after(str(final), final.stat().st_mtime_ns)
    finally:
        watch.stop()


def test_a_file_copied_in_between_writer_scans_ends_on_its_close(
    agent: Any, watch_dir: Path, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """`cp` of a finished 12 MiB file takes milliseconds, too short for any /proc scan to see
    the writer; the 30 s idle timeout would have ruled. The close ends it within seconds."""
    runner: AgentProcess = agent(STREAM_TIMEOUT_SECONDS="30")
    source = tmp_path / "finished.mp4"
    source.write_bytes(os.urandom(12 * MiB))
    wait_for(lambda: runner.events_named("agent.started"), deadline_s=30, what="the agent")
    (watch_dir / "day").mkdir()  # a folder made while the agent runs
    time.sleep(0.3)
    copied = watch_dir / "day" / "cam.mp4"
    started = time.monotonic()
    shutil.copyfile(source, copied)
    doc = wait_metadata(s3_client, bucket, "cam.mp4", deadline_s=25)
    took = time.monotonic() - started
    assert took < 15, f"{took:.1f} s: the idle timeout ruled, not the close"
    assert_exact(s3_client, bucket, doc, copied, tmp_path)
    assert not runner.events_named("watch.closes_unavailable")
