"""The command hook: ON_COMPLETE_COMMAND run (no shell) for each completed stream.

The metadata JSON goes to its stdin, the `STREAMUP_*` variables into an environment built from a
short list of the agent's own (PATH, HOME, the locale), never from all of it: the agent's
credentials stay with the agent. It runs in a session of its own, so the timeout
(HOOK_TIMEOUT_SECONDS) kills it and every child it started; so does a shutdown. Its output
(stdout and stderr together) goes to the log, the last `OUTPUT_LIMIT_BYTES` of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from streamup.after.events import EventType
from streamup.after.metadata import encode_metadata
from streamup.after.schedule import Attempt, Outcome
from streamup.models import OutboxEvent

log = structlog.get_logger("streamup")

OUTPUT_LIMIT_BYTES = 8192
# Of the agent's environment, only these reach a hook.
BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# After the hook exits, a child it left behind may still hold its output pipe open.
_OUTPUT_GRACE_S = 1.0


def hook_env(doc: Mapping[str, object], parent: Mapping[str, str]) -> dict[str, str]:
    """The hook's environment: the base variables the agent has, then the event's."""
    env = {name: parent[name] for name in BASE_ENV if name in parent}
    env.setdefault("PATH", _DEFAULT_PATH)
    metadata = doc.get("metadata")
    path = metadata.get("original_file_path") if isinstance(metadata, dict) else None

    def text(value: object) -> str:
        return "" if value is None else str(value)

    env.update(
        STREAMUP_EVENT=text(doc.get("type")),
        STREAMUP_EVENT_ID=text(doc.get("id")),
        STREAMUP_STREAM_ID=text(doc.get("stream_id")),
        STREAMUP_BUCKET=text(doc.get("bucket")),
        STREAMUP_KEY=text(doc.get("key")),
        STREAMUP_METADATA_KEY=text(doc.get("metadata_key")),
        STREAMUP_PATH=text(path),
        STREAMUP_SIZE_BYTES=text(doc.get("size_bytes")),
        STREAMUP_SHA256=text(doc.get("sha256")),
    )
    return env


@dataclass(frozen=True, slots=True)
class HookRun:
    """How one run of the hook went."""

    exit_code: int | None  # None: it never started, or was killed at the timeout
    output: bytes  # the last OUTPUT_LIMIT_BYTES of stdout + stderr
    dropped_bytes: int  # output before those
    duration_s: float
    error: str | None = None  # why it counts as failed; None when it exited 0


async def run_hook(
    argv: Sequence[str], stdin: bytes, env: Mapping[str, str], *, timeout_s: float
) -> HookRun:
    """Run the command once, feeding `stdin`; kill its whole process group at the timeout."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group: the kill reaches its children
        )
    except OSError as exc:
        return HookRun(None, b"", 0, 0.0, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    tail = _Tail(OUTPUT_LIMIT_BYTES)
    assert proc.stdin is not None and proc.stdout is not None
    feeder = asyncio.create_task(_feed(proc.stdin, stdin))
    reader = asyncio.create_task(_read(proc.stdout, tail))
    try:
        try:
            async with asyncio.timeout(timeout_s):
                code: int | None = await proc.wait()
        except TimeoutError:
            code = None
            _kill_group(proc.pid)
            await proc.wait()
        await asyncio.wait({reader}, timeout=_OUTPUT_GRACE_S)
    finally:
        if proc.returncode is None:  # cancelled: the agent stops, the hook goes too
            _kill_group(proc.pid)
            await proc.wait()
        for task in (feeder, reader):
            task.cancel()
        await asyncio.gather(feeder, reader, return_exceptions=True)
    duration_s = time.monotonic() - started
    return HookRun(code, bytes(tail.data), tail.dropped, duration_s, _failure(code, timeout_s))


def _failure(code: int | None, timeout_s: float) -> str | None:
    if code is None:
        return f"killed after {timeout_s:g} s (HOOK_TIMEOUT_SECONDS)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}" if code else None


class CommandSink:
    """Runs ON_COMPLETE_COMMAND for every completed stream (not for `stream.failed`: there is no
    metadata to give it)."""

    name = "command"
    concurrency = 2  # hooks often transcode or copy: few at once on a recording host

    def __init__(self, argv: Sequence[str], *, timeout_s: float) -> None:
        self.argv = list(argv)
        self.timeout_s = timeout_s

    def accepts(self, event_type: str) -> bool:
        return event_type == EventType.STREAM_COMPLETED.value

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def deliver(self, event: OutboxEvent) -> Attempt:
        doc = json.loads(event.body)
        metadata = doc.get("metadata")
        stdin = encode_metadata(metadata) if isinstance(metadata, dict) else b""
        env = hook_env(doc, os.environ)
        run = await run_hook(self.argv, stdin, env, timeout_s=self.timeout_s)
        log.info(
            "hook.finished",
            event_id=event.event_id,
            stream_id=event.stream_id,
            exit_code=run.exit_code,
            duration_s=round(run.duration_s, 3),
            output=run.output.decode("utf-8", errors="replace"),
            output_dropped_bytes=run.dropped_bytes,
            error=run.error,
        )
        if run.error is None:
            return Attempt(Outcome.DELIVERED)
        return Attempt(Outcome.TRANSIENT, f"{self.argv[0]}: {run.error}")


class _Tail:
    """The last `limit` bytes written to it, and how many came before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    # A hook that does not read its stdin is fine: it closes the pipe, we stop writing.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
        pipe.close()
        await pipe.wait_closed()


async def _read(pipe: asyncio.StreamReader, tail: _Tail) -> None:
    while chunk := await pipe.read(65536):
        tail.add(chunk)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
