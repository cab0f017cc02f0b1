"""The /proc scan for writers, against real processes holding real files open."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamup.files.source import stat_path
from streamup.files.writers import WriterIndex, scan_writers
from streamup.models import FileIdentity

HOLD = (
    "import sys, time; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); "
    "time.sleep(60)"
)
Holder = Callable[[str, str], FileIdentity]


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    procs: list[subprocess.Popen[str]] = []

    def hold(name: str, mode: str) -> FileIdentity:
        path = tmp_path / name
        path.write_bytes(b"x")
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        state = stat_path(str(path))
        assert state is not None
        return state.identity

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_scan_finds_files_open_for_writing_and_only_those_looked_for(
    holder: Callable[[str, str], FileIdentity],
) -> None:
    written, also_written, read = holder("a.mp4", "ab"), holder("b.mp4", "r+b"), holder("c", "rb")
    everything = scan_writers(os.getpid())
    assert everything is not None and {written, also_written} <= everything
    assert read not in everything
    assert scan_writers(os.getpid(), {written, read}) == {written}


async def test_index_scans_again_for_a_file_it_has_not_looked_for(
    holder: Callable[[str, str], FileIdentity],
) -> None:
    first, second = holder("a.mp4", "ab"), holder("b.mp4", "ab")
    index = WriterIndex(max_age_s=3600)  # a fresh scan only because a new file is asked about
    assert await index.is_written(first) is True
    assert await index.is_written(second) is True
    assert await index.is_written(FileIdentity(first.device, first.inode + 10**9)) is False
