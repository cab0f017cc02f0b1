"""ffprobe as a subprocess with a deadline, and a pure parser of its JSON output.

Probing runs after the video object is already complete in S3, so nothing here may fail a stream:
a missing binary, a corrupt file, a hang or unreadable output all become a `ProbeResult` whose
`error` says why, and the metadata then carries `duration_seconds: null`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

# How long to wait for a killed ffprobe's pipes to reach EOF before closing them by force.
_DRAIN_AFTER_KILL_S = 5.0
# Enough of a stderr line to explain a failure without flooding a log line.
_MAX_STDERR_CHARS = 300
# Matroska keeps per-stream durations as tags: "HH:MM:SS.fffffffff".
_CLOCK = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What ffprobe could tell about a file. Every field is None when it could not tell."""

    duration_seconds: float | None = None
    format_name: str | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    video_bit_rate: int | None = None
    audio_codec: str | None = None
    bit_rate: int | None = None  # of the whole container
    error: str | None = None  # why probing failed or found no duration, for a warning


# --- pure parsing ---------------------------------------------------------------------------


def parse_ffprobe_output(text: str) -> ProbeResult:
    """Parse `ffprobe -v error -print_format json -show_format -show_streams` output.

    Never raises: input that is not an ffprobe JSON document gives a result with every field
    None and `error` set. A document without a usable duration keeps its other fields and sets
    `error`, so the metadata can say why `duration_seconds` is null.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested input
        return ProbeResult(error=f"ffprobe output is not JSON: {exc}")
    if not isinstance(document, dict):
        return ProbeResult(error="ffprobe output is not a JSON object")
    container = _mapping(document.get("format"))
    raw_streams = document.get("streams")
    streams = [_mapping(s) for s in raw_streams] if isinstance(raw_streams, list) else []
    if not container and not streams:
        return ProbeResult(error="ffprobe output has no format or streams")

    duration = _as_duration(container.get("duration"))
    if duration is None:
        durations = [d for d in map(_stream_duration, streams) if d is not None]
        duration = max(durations, default=None)
    video = _main_video_stream(streams)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return ProbeResult(
        duration_seconds=duration,
        format_name=_as_text(container.get("format_name")),
        video_codec=_as_text(video.get("codec_name")) if video else None,
        width=_as_positive_int(video.get("width")) if video else None,
        height=_as_positive_int(video.get("height")) if video else None,
        frame_rate=_frame_rate(video) if video else None,
        video_bit_rate=_as_positive_int(video.get("bit_rate")) if video else None,
        audio_codec=_as_text(audio.get("codec_name")) if audio else None,
        bit_rate=_as_positive_int(container.get("bit_rate")),
        error=None if duration is not None else "ffprobe reported no duration",
    )


def _mapping(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _as_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _as_duration(value: object) -> float | None:
    """A duration in seconds; ffprobe writes "N/A" when it does not know."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        return None
    # NaN, infinity and negatives come from broken timestamps, not from real recordings.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _as_positive_int(value: object) -> int | None:
    """ffprobe writes sizes as numbers and bit rates as strings; 0 and "N/A" mean unknown."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = int(value)
    except ValueError:  # "N/A", "", or more digits than int() accepts
        return None
    return number if number > 0 else None


def _parse_clock(text: str) -> float | None:
    match = _CLOCK.match(text.strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    # Floats throughout: an absurd hour count becomes infinity (rejected), not an OverflowError.
    return _as_duration(float(hours) * 3600 + float(minutes) * 60 + float(seconds))


def _stream_duration(stream: dict[str, object]) -> float | None:
    duration = _as_duration(stream.get("duration"))
    if duration is not None:
        return duration
    # Matroska has no per-stream duration field; the muxer writes a DURATION tag instead
    # (sometimes with a language suffix, "DURATION-eng").
    for name, value in _mapping(stream.get("tags")).items():
        if name.upper().startswith("DURATION") and isinstance(value, str):
            return _parse_clock(value)
    return None


def _main_video_stream(streams: list[dict[str, object]]) -> dict[str, object] | None:
    """The first real video stream: cover art in audio files is a video stream too."""
    for stream in streams:
        if stream.get("codec_type") != "video":
            continue
        if _mapping(stream.get("disposition")).get("attached_pic") == 1:
            continue
        return stream
    return None


def _parse_rate(value: object) -> float | None:
    """A rate written "num/den" (or a plain number); "0/0" means unknown."""
    if not isinstance(value, str):
        return None
    numerator, _, denominator = value.partition("/")
    try:
        rate = float(numerator) / float(denominator or "1")
    except (ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if math.isfinite(rate) and rate > 0 else None


def _frame_rate(stream: dict[str, object]) -> float | None:
    # avg_frame_rate is what a player sees; r_frame_rate is the stream's base rate, a fallback
    # for streams whose average is unknown (it is "0/0" until enough frames were seen).
    return _parse_rate(stream.get("avg_frame_rate")) or _parse_rate(stream.get("r_frame_rate"))


# --- the subprocess ---------------------------------------------------------------------------


async def probe_media(
    path: str | Path, *, ffprobe_path: str | None = None, timeout_s: float = 30.0
) -> ProbeResult:
    """Run ffprobe on `path` and parse what it prints. Never raises for a probing failure.

    `ffprobe_path` is the binary to run (FFPROBE_PATH); None runs `ffprobe` from PATH. An ffprobe
    that runs longer than `timeout_s` (a file on a hung mount, a pathological input) is killed
    together with anything it started.
    """
    program = ffprobe_path or "ffprobe"
    # "file:" makes ffprobe read a local file even when its name looks like a protocol
    # ("cam1:2024.mp4" is otherwise "Protocol not found") or an option ("-x.mp4").
    target = f"file:{os.fspath(path)}"
    args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams", target]
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so a timeout kills a wrapper script's children as well.
            start_new_session=True,
        )
    except FileNotFoundError:
        return ProbeResult(
            error=f"ffprobe not found at {program!r} (set FFPROBE_PATH or install ffmpeg)"
        )
    except OSError as exc:  # not executable, too many open files, ...
        return ProbeResult(error=f"cannot run ffprobe at {program!r}: {exc}")

    finished = False
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
        finished = True
    except TimeoutError:
        return ProbeResult(error=f"ffprobe timed out after {timeout_s:g} s")
    finally:
        # Also on cancellation: a probe abandoned by its caller must not outlive it.
        if not finished:
            await _stop(process)

    if process.returncode != 0:
        return ProbeResult(error=f"ffprobe exit {process.returncode}: {_first_line(stderr)}")
    return parse_ffprobe_output(stdout.decode("utf-8", errors="replace"))


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Kill ffprobe's process group, reap it and close its pipes."""
    # Once reaped (returncode set) the pid may belong to someone else: never signal it then.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    try:
        # asyncio closes the transport only after the exit *and* EOF on both pipes; reading to
        # EOF also unblocks pipes paused on a full buffer. An unclosed transport holds file
        # descriptors until it is collected, with a ResourceWarning.
        async with asyncio.timeout(_DRAIN_AFTER_KILL_S):
            await process.communicate()
    except TimeoutError:
        # Something outside the group (a daemon it spawned) still holds the pipes open.
        # asyncio offers no public way to close them, so close the transport directly.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()
        await process.wait()


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()[:_MAX_STDERR_CHARS]
    return "(no message)"
