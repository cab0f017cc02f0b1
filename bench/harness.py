"""Plumbing the workloads share: moto's S3 server, `streamup run` as a child process with its
JSON log, and CPU and memory readings from /proc.

Everything runs on this host; /proc is the only source of CPU and RSS figures, so the project's
virtual environment is all that is needed (no psutil).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
STREAMUP_BUCKET = "streamup-bench"  # the agent's (it creates it)
PEER_BUCKET = "peers-bench"  # aws's, rclone's and the calibration's
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RSS_EVERY_S = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without S3/AWS/rclone settings, plus `extra`.

    An inherited AWS_CA_BUNDLE, for one, makes rclone refuse a plain-HTTP endpoint.
    """
    prefixes = ("AWS_", "S3_", "RCLONE_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


# ---------------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of the children it has reaped (ffprobe, for one)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLOCK_TICKS


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in bytes."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / _CLOCK_TICKS


def own_seconds() -> float:
    """CPU of this process and of every child it has reaped (agents, peers, their children)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class RssSampler:
    """Samples a process's VmRSS every 0.2 s on a thread; `peak_bytes` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, VmRSS bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                rss = memory_bytes(self.pid)["VmRSS"]
                self.samples.append((time.time(), rss))
                self.peak_bytes = max(self.peak_bytes, rss)
            self._stop.wait(_RSS_EVERY_S)


# ---------------------------------------------------------------------- moto


@dataclass
class Moto:
    """moto's S3 server: its endpoint, its process, and its request log (one line a request)."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def write_requests(self, since_offset: int, *, but_probes: bool = False) -> int:
        """PUT, POST and DELETE requests logged after `since_offset` (from log_offset());
        `but_probes`: not counting those on the start-up probe's object (s3.integrity)."""
        with self.log_path.open("rb") as handle:
            handle.seek(since_offset)
            text = handle.read().decode(errors="replace")
        lines = [line for line in text.splitlines() if _WRITE_REQUEST.search(line)]
        return sum(1 for line in lines if not (but_probes and ".streamup-probe-" in line))


# werkzeug's request log line, `"PUT /bucket/key HTTP/1.1" 200 -`, colour codes on errors.
_WRITE_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?:PUT|POST|DELETE) ')


def moto_command(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def moto_server(workdir: Path, spool_dir: Path | None = None) -> Iterator[Moto]:
    """Start moto in server mode on a free loopback port; stop it on exit.

    `spool_dir`: where moto keeps the bodies it spools to temporary files (every part and object
    over 8 MiB), its TMPDIR; by default the system's temporary folder."""
    port = free_port()
    log_path = workdir / "moto.log"
    extra = {"TMPDIR": str(spool_dir)} if spool_dir is not None else {}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            moto_command(port),
            stdout=log,
            stderr=log,
            env=clean_env(MOTO_ALLOW_NONEXISTENT_REGION="true", **extra),
        )
    try:
        _wait_for_port(port, proc)
        yield Moto(f"http://127.0.0.1:{port}", proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"moto exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"moto does not listen on port {port} after {deadline_s} s")


# ---------------------------------------------------------------------- the agent


def parse_time(stamp: str) -> float:
    """An ISO-8601 UTC log timestamp as epoch seconds (the clock time.time() reads)."""
    return datetime.fromisoformat(stamp).timestamp()


def agent_settings(concurrency: int, chunk_bytes: int, **more: str) -> dict[str, str]:
    """The settings every measured agent states explicitly (the rest are the defaults)."""
    return {
        "UPLOAD_CONCURRENCY": str(concurrency),
        "CHUNK_SIZE_BYTES": str(chunk_bytes),
        "STREAM_TIMEOUT_SECONDS": "2",
        "LOG_LEVEL": "DEBUG",  # one line per part: when each part landed
        **more,
    }


@dataclass
class Agent:
    """One `streamup run` child: its settings (environment), its folders, its JSON log."""

    workdir: Path
    endpoint: str
    bucket: str
    settings: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    @property
    def watch_dir(self) -> Path:
        return self.workdir / "watch"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        return clean_env(
            WATCH_DIR=str(self.watch_dir),
            STATE_DIR=str(self.workdir / "state"),
            S3_ENDPOINT_URL=self.endpoint,
            S3_ACCESS_KEY_ID=ACCESS_KEY,
            S3_SECRET_ACCESS_KEY=SECRET_KEY,
            S3_BUCKET_NAME=self.bucket,
            PROM_PORT="0",
            PYTHONUNBUFFERED="1",
            **self.settings,
        )

    def command(self) -> str:
        """The command line as a person would type it (settings as environment variables)."""
        shown = " ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"{shown} streamup run"

    def start(self) -> float:
        """Start the agent; returns the epoch time just before the process was created."""
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        self.events, self._offset = [], 0
        self.log_path.write_bytes(b"")
        with self.log_path.open("ab") as log:
            started = time.time()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamup", "run"],
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return started

    def stop(self, timeout_s: float = 60.0) -> float:
        """SIGTERM, then wait; returns how long the agent took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout_s)
        if self.proc.returncode != 0:
            raise RuntimeError(f"agent exited {self.proc.returncode}; see {self.log_path}")
        return time.monotonic() - started

    def poll_events(self) -> list[dict[str, Any]]:
        """Read the log lines written since the last call; every event seen so far."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    event["t"] = parse_time(event["timestamp"])
                    self.events.append(event)
        return self.events

    def named(self, name: str, path: Path | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and (path is None or e.get("path") == str(path))
        ]

    def wait_for(
        self, name: str, *, deadline_s: float, path: Path | None = None, count: int = 1
    ) -> dict[str, Any]:
        """Wait until `count` events called `name` (for `path`) were logged; the last of them."""
        end = time.monotonic() + deadline_s
        while True:
            self.poll_events()
            found = self.named(name, path)
            if len(found) >= count:
                return found[count - 1]
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > end:
                raise TimeoutError(f"{len(found)}/{count} {name} events after {deadline_s} s")
            time.sleep(0.05)


@dataclass
class Bench:
    """What every workload gets: the moto server, a boto3 client, a scratch folder, the peers."""

    moto: Moto
    s3: Any
    workdir: Path
    peers: list[Any]

    def fresh_dir(self, name: str) -> Path:
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path
