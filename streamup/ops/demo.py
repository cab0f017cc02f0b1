"""`streamup demo`: the whole pipeline on this machine with nothing configured.

A local S3 server (moto, in memory) on loopback, the embedded checkpoint store in a temporary
folder, a recording written in real time by ffmpeg (or a synthetic byte stream without ffmpeg),
live progress, then the object downloaded, verified against the file, and its metadata printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from streamup.errors import ConfigError
from streamup.ops.progress import RateMeter, sample
from streamup.service import Agent
from streamup.settings import Settings

MiB = 1024 * 1024
# What `python -m moto.server` imports: moto and its web stack, the `demo` extra. The agent
# itself never needs them, so a production install leaves them out.
DEMO_MODULES = ("moto", "flask", "flask_cors")


def require_demo_tools() -> None:
    """Refuse, in one line that says what to install, when the local S3 server is missing."""
    missing = [name for name in DEMO_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the demo's local S3 server needs {', '.join(missing)}: pip install 'streamup[demo]'"
        )


class DemoSettings(Settings):
    """The demo's settings come from the demo alone: "nothing configured" must also mean that a
    REDIS_URL, S3_* or WATCH_EXTENSIONS in the environment or `.env` (a production Redis!) is
    neither used nor touched."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local S3 server (moto) did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _record(path: Path, seconds: float) -> None:
    """Write a recording in real time: ffmpeg when present, else a synthetic byte stream."""
    if shutil.which("ffmpeg"):
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "12M",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
        return
    print("  (ffmpeg not found: writing a synthetic byte stream instead of a video)")
    rate = 2 * MiB
    with path.open("wb") as handle:
        for _ in range(int(seconds * 4)):
            handle.write(os.urandom(rate // 4))
            handle.flush()
            await asyncio.sleep(0.25)


def _progress(agent: Agent, path: Path, meter: RateMeter) -> str:
    size = path.stat().st_size if path.exists() else 0
    lines = sample(agent.snapshot().streams, meter, time.monotonic(), agent.settings.watch_dir)
    for line in lines:
        return (
            f"  recording {size / MiB:6.1f} MiB | uploaded {line.uploaded_bytes / MiB:6.1f} MiB"
            f" in {line.parts} parts at {line.rate_bytes_s / MiB:4.1f} MiB/s | {line.state}"
        )
    return f"  recording {size / MiB:6.1f} MiB | waiting for the first whole part"


async def run_demo(*, seconds: float = 8.0) -> int:
    require_demo_tools()
    print("streamup demo")
    with tempfile.TemporaryDirectory(prefix="streamup-demo-") as tmp, local_s3() as endpoint:
        print(f"  local S3 server: {endpoint} (moto, in memory: it is gone when the demo ends)")
        root = Path(tmp)
        values: dict[str, Any] = {
            "watch_dir": root / "watch",
            "state_dir": root / "state",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": "demo",
            "s3_secret_access_key": "demo",
            "s3_bucket_name": "streamup-demo",
            "chunk_size_bytes": 5 * MiB,
            "stream_timeout_seconds": 2,
            "scan_interval_seconds": 1,
            "prom_port": 0,
        }
        settings = DemoSettings(**values)
        settings.watch_dir.mkdir()
        print(f"  watching {settings.watch_dir}; checkpoints in {settings.state_dir}")
        agent, stop = Agent(settings), asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await agent.ready.wait()
        recording = settings.watch_dir / "camera-1" / "demo.mp4"
        recording.parent.mkdir()
        print(f"  recording {seconds:.0f} s of video into {recording.name} in real time ...")
        recorder = asyncio.create_task(_record(recording, seconds))
        meter = RateMeter()
        while not recorder.done():
            print(_progress(agent, recording, meter), flush=True)
            await asyncio.sleep(1.0)
        print("  recording ended; waiting for the stream to go idle and complete ...")
        deadline = time.monotonic() + 60
        # Polling is the point here: it paints a progress line while the agent works.
        while str(recording) not in agent.completed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        stop.set()
        await running
        done = agent.completed.get(str(recording))
        if done is None:
            print("demo FAILED: the stream did not complete in time", file=sys.stderr)
            return 1
        return await _verify(endpoint, done.bucket, done.key, recording)


async def _verify(endpoint: str, bucket: str, key: str, recording: Path) -> int:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="demo",
        aws_secret_access_key="demo",
    ) as s3:
        response = await s3.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            remote = hashlib.sha256(await body.read()).hexdigest()
        response = await s3.get_object(Bucket=bucket, Key=f"{key}.metadata.json")
        async with response["Body"] as body:
            metadata = json.loads(await body.read())
    local = hashlib.sha256(recording.read_bytes()).hexdigest()
    print(f"  object: s3://{bucket}/{key}")
    print("  metadata:")
    print(json.dumps(metadata, indent=2))
    if remote != local or metadata.get("sha256") != local:
        print(f"demo FAILED: object sha256 {remote} != file sha256 {local}", file=sys.stderr)
        return 1
    print(f"verified: the object equals the recording byte for byte (sha256 {local})")
    return 0
