"""ffprobe: the pure parser over stored real outputs, and the subprocess on real media.

The stored outputs in tests/data/ffprobe were made with ffmpeg 5.1 and
`ffprobe -v error -print_format json -show_format -show_streams FILE` on:
  mp4_h264_aac      testsrc2 320x240@25 + sine, -t 3, libx264 yuv420p + aac, .mp4
  matroska          the same, -t 2, libx264 + libopus, .mkv (stream durations only as DURATION tags)
  fragmented_mp4    testsrc2 @30, -t 2, libx264 + aac, -movflags +frag_keyframe+empty_moov
  mpegts            the same as mp4_h264_aac with -t 2, .ts
  audio_only        sine -t 2, aac, .m4a
  audio_with_cover  sine -t 2 + a PNG mapped as video with -disposition:v:0 attached_pic, .m4a
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from streamup.files.probe import ProbeResult, parse_ffprobe_output, probe_media

DATA = Path(__file__).parent / "data" / "ffprobe"
MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"


def stored(name: str) -> str:
    return (DATA / f"{name}.json").read_text()


def stored_doc(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stored(name))
    return document


# --- the pure parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "mp4_h264_aac",
            ProbeResult(3.0, MP4_FORMAT, "h264", 320, 240, 25.0, 272746, "aac", 353344),
        ),
        (
            "matroska",
            ProbeResult(2.008, "matroska,webm", "h264", 320, 240, 25.0, None, "opus", 346784),
        ),
        (
            "fragmented_mp4",
            ProbeResult(2.066667, MP4_FORMAT, "h264", 320, 240, 30.0, 287092, "aac", 356736),
        ),
        ("mpegts", ProbeResult(2.023222, "mpegts", "h264", 320, 240, 25.0, None, "aac", 402162)),
        ("audio_only", ProbeResult(2.0, MP4_FORMAT, None, None, None, None, None, "aac", 75116)),
        (
            "audio_with_cover",
            ProbeResult(2.0, MP4_FORMAT, None, None, None, None, None, "aac", 81960),
        ),
    ],
)
def test_parse_stored_ffprobe_outputs(name: str, expected: ProbeResult) -> None:
    assert parse_ffprobe_output(stored(name)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{}", "[]", "null", "42", '"text"', '{"format": 3, "streams": 1}', "[" * 5000],
)
def test_parse_garbage_gives_no_fields_and_an_error(text: str) -> None:
    result = parse_ffprobe_output(text)
    assert result.error
    assert result == ProbeResult(error=result.error)


def test_duration_falls_back_to_the_longest_stream_duration() -> None:
    document = stored_doc("mpegts")
    del document["format"]["duration"]
    result = parse_ffprobe_output(json.dumps(document))
    assert result.duration_seconds == 2.0  # video 2.000000 beats audio 1.927244
    assert result.error is None


def test_duration_falls_back_to_matroska_duration_tags() -> None:
    document = stored_doc("matroska")
    del document["format"]["duration"]
    assert parse_ffprobe_output(json.dumps(document)).duration_seconds == pytest.approx(2.008)


@pytest.mark.parametrize("value", ["N/A", "", "nan", "inf", "-1.5", "1e400", None, True, [1]])
def test_unusable_durations_give_none_and_say_so(value: object) -> None:
    document = {
        "format": {"format_name": "mpegts", "duration": value},
        "streams": [
            {"codec_type": "video", "codec_name": "h264", "duration": value},
            {"codec_type": "audio", "codec_name": "aac", "tags": {"DURATION": "garbage"}},
        ],
    }
    result = parse_ffprobe_output(json.dumps(document))
    assert result.duration_seconds is None
    assert result.error == "ffprobe reported no duration"
    assert (result.format_name, result.video_codec, result.audio_codec) == ("mpegts", "h264", "aac")


def test_format_without_duration_uses_numeric_stream_durations() -> None:
    document = {
        "format": {"format_name": "matroska,webm", "duration": "N/A"},
        "streams": [
            {"codec_type": "video", "tags": {"DURATION-eng": "01:02:03.500000000"}},
            {"codec_type": "audio", "duration": 12},
        ],
    }
    assert parse_ffprobe_output(json.dumps(document)).duration_seconds == 3723.5


@pytest.mark.parametrize(
    ("avg", "base", "expected"),
    [
        ("25/1", "50/1", 25.0),
        ("30000/1001", "30000/1001", 29.97),
        ("0/0", "25/1", 25.0),
        ("25/0", "24/1", 24.0),
        ("0/0", "0/0", None),
        ("N/A", None, None),
        ("24", None, 24.0),
    ],
)
def test_frame_rate_prefers_avg_then_r_frame_rate(
    avg: str, base: str | None, expected: float | None
) -> None:
    stream = {"codec_type": "video", "codec_name": "h264", "avg_frame_rate": avg}
    if base is not None:
        stream["r_frame_rate"] = base
    document = {"format": {"duration": "1.0"}, "streams": [stream]}
    assert parse_ffprobe_output(json.dumps(document)).frame_rate == expected


def test_main_video_is_the_first_stream_that_is_not_cover_art() -> None:
    document = {
        "format": {"duration": "1.0", "bit_rate": "N/A"},
        "streams": [
            {"codec_type": "video", "codec_name": "mjpeg", "disposition": {"attached_pic": 1}},
            {"codec_type": "video", "codec_name": "hevc", "width": 1920, "height": 1080},
            {"codec_type": "video", "codec_name": "h264", "width": 640, "height": 480},
        ],
    }
    result = parse_ffprobe_output(json.dumps(document))
    assert (result.video_codec, result.width, result.height) == ("hevc", 1920, 1080)
    assert result.bit_rate is None


# --- ffprobe as a subprocess on real media --------------------------------------------------------


def recording_args(seconds: int, *extra: str) -> list[str]:
    """The brief's recipe: H.264 test pattern 320x240@25 with an AAC sine tone."""
    pattern = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=440"]
    codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    return [*pattern, *tone, "-t", str(seconds), *codecs, *extra]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real recordings made by ffmpeg, once for this module: name -> file."""
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "these tests need ffmpeg and ffprobe on PATH (apt-get install ffmpeg)"
    folder = tmp_path_factory.mktemp("media")
    recipes = {
        "h264_aac.mp4": recording_args(3),
        "recording.mkv": recording_args(2),
        "fragmented.mp4": recording_args(2, "-movflags", "+frag_keyframe+empty_moov"),
    }
    # In parallel: the three encodes are the slow part of this module.
    jobs = {
        name: subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-y", *args, str(folder / name)],
            stdin=subprocess.DEVNULL,
        )
        for name, args in recipes.items()
    }
    for name, job in jobs.items():
        assert job.wait(timeout=60) == 0, f"ffmpeg could not make {name}"
    return {name: folder / name for name in recipes}


@pytest.mark.parametrize(
    ("name", "duration_s", "format_name", "audio_codec"),
    [
        ("h264_aac.mp4", 3.0, MP4_FORMAT, "aac"),
        ("recording.mkv", 2.0, "matroska,webm", "aac"),
        ("fragmented.mp4", 2.0, MP4_FORMAT, "aac"),
    ],
)
async def test_probe_media_reads_real_recordings(
    media: dict[str, Path], name: str, duration_s: float, format_name: str, audio_codec: str
) -> None:
    result = await probe_media(media[name])
    assert result.error is None
    assert result.duration_seconds == pytest.approx(duration_s, abs=0.1)
    assert result.format_name == format_name
    assert (result.video_codec, result.width, result.height) == ("h264", 320, 240)
    assert result.frame_rate == 25.0
    assert result.audio_codec == audio_codec
    assert result.bit_rate is not None and result.bit_rate > 0


async def test_probe_media_reads_names_that_look_like_protocols(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the "file:" prefix ffprobe answers "Protocol not found" for this name.
    tricky = tmp_path / "cam1:2024-01-01.mp4"
    shutil.copyfile(media["h264_aac.mp4"], tricky)
    monkeypatch.chdir(tmp_path)  # a relative name starting with "cam1:", as a watcher may pass it
    result = await probe_media("cam1:2024-01-01.mp4")
    assert result.duration_seconds == pytest.approx(3.0, abs=0.1)


async def test_probe_media_on_a_corrupt_file_gives_an_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(64 * 1024))
    result = await probe_media(corrupt)
    assert result.duration_seconds is None
    assert result.error is not None and result.error.startswith("ffprobe exit 1: ")


async def test_probe_media_on_an_empty_file_gives_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    result = await probe_media(empty)
    assert result.duration_seconds is None
    assert result.error is not None and result.error.startswith("ffprobe exit")


async def test_probe_media_on_a_missing_file_gives_an_error(tmp_path: Path) -> None:
    result = await probe_media(tmp_path / "gone.mp4")
    assert result.duration_seconds is None
    assert result.error is not None and "No such file" in result.error


async def test_probe_media_without_ffprobe_says_how_to_fix_it(media: dict[str, Path]) -> None:
    result = await probe_media(media["h264_aac.mp4"], ffprobe_path="/nope")
    assert result == ProbeResult(
        error="ffprobe not found at '/nope' (set FFPROBE_PATH or install ffmpeg)"
    )


async def test_probe_media_with_a_non_executable_ffprobe_gives_an_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "ffprobe"
    not_executable.write_text("#!/bin/sh\n")
    result = await probe_media(tmp_path / "x.mp4", ffprobe_path=str(not_executable))
    assert result.duration_seconds is None
    assert result.error is not None and result.error.startswith("cannot run ffprobe")


async def test_probe_media_with_unparsable_output_gives_an_error(tmp_path: Path) -> None:
    liar = write_script(tmp_path / "ffprobe", "echo 'this is not json'")
    result = await probe_media(tmp_path / "x.mp4", ffprobe_path=str(liar))
    assert result.duration_seconds is None
    assert result.error is not None and result.error.startswith("ffprobe output is not JSON")


async def test_hanging_ffprobe_is_killed_with_its_children(tmp_path: Path) -> None:
    # The wrapper's `sleep` is a child of the "ffprobe": killing only the wrapper would leave
    # it running, holding the output pipes open.
    hanging = write_script(
        tmp_path / "ffprobe",
        f"echo $$ > {tmp_path}/wrapper.pid\nsleep 60 &\necho $! > {tmp_path}/sleep.pid\nwait",
    )
    started = time.monotonic()
    result = await probe_media(tmp_path / "x.mp4", ffprobe_path=str(hanging), timeout_s=0.5)
    elapsed_s = time.monotonic() - started
    assert result == ProbeResult(error="ffprobe timed out after 0.5 s")
    assert elapsed_s < 2.0
    for name in ("wrapper.pid", "sleep.pid"):
        pid = int((tmp_path / name).read_text())
        await wait_until_gone(pid)


async def test_cancelled_probe_kills_ffprobe(tmp_path: Path) -> None:
    hanging = write_script(tmp_path / "ffprobe", f"echo $$ > {tmp_path}/pid\nexec sleep 60")
    task = asyncio.create_task(probe_media(tmp_path / "x.mp4", ffprobe_path=str(hanging)))
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 5
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the fake ffprobe never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_gone(int(pid_file.read_text()))


def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def wait_until_gone(pid: int, deadline_s: float = 2.0) -> None:
    """Wait for `pid` to exit. A zombie counts as gone: its reaper may be slow, or not us."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        assert time.monotonic() < deadline, f"process {pid} is still running ({state})"
        await asyncio.sleep(0.02)
