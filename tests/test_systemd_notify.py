"""sd_notify as systemd hears it: a real AF_UNIX datagram socket in the place of systemd's, and a
real `streamup run` process that must say READY=1 once it answers /healthz, WATCHDOG=1 at half
the watchdog timeout, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamup.ops.systemd import notify, supervise, watchdog_interval_s
from tests.servers import free_port


class NotifySocket:
    """What systemd listens on: a bound datagram socket; `receive` returns one message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.address = address

    def receive(self, timeout_s: float = 20.0) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        self.sock.settimeout(0.0)
        found = []
        with contextlib.suppress(BlockingIOError):
            while True:
                found.append(self.sock.recv(4096).decode())
        return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short folder: a socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        listener = NotifySocket(os.path.join(folder, "notify"))
        yield listener
        listener.close()


def test_notify_sends_one_datagram_to_a_path_socket(notify_socket: NotifySocket) -> None:
    assert notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": notify_socket.address})
    assert notify_socket.receive() == "READY=1\nSTATUS=x"


def test_notify_reaches_an_abstract_socket() -> None:
    listener = NotifySocket(f"@streamup-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": listener.address})
        assert listener.receive() == "WATCHDOG=1"
    finally:
        listener.close()


def test_notify_without_systemd_or_with_a_dead_socket_sends_nothing(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_interval_is_half_the_timeout_and_only_for_the_watched_pid() -> None:
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


async def test_an_agent_that_stops_before_it_is_ready_says_only_stopping(
    notify_socket: NotifySocket,
) -> None:
    ready, stopping = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        supervise(ready, stopping, "x", {"NOTIFY_SOCKET": notify_socket.address})
    )
    await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert [m.split("\n")[0] for m in notify_socket.pending()] == ["STOPPING=1"]


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return int(answer.status)
    except OSError:
        return 0


def test_streamup_run_says_ready_after_it_is_healthy_then_pings_then_stopping(
    agent: Any, notify_socket: NotifySocket, watch_dir: Path
) -> None:
    port = free_port()
    process = agent(
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC="400000",  # a 0.4 s watchdog: a ping every 0.2 s
        PROM_PORT=str(port),
        PROM_HOST="127.0.0.1",
    )
    first = notify_socket.receive(timeout_s=30)
    assert first == f"READY=1\nSTATUS=watching {watch_dir}", process.log_text()
    # READY=1 comes after start-up: the agent already answers /healthz with 200.
    assert healthz(port) == 200
    assert process.events_named("agent.started")
    pings = []
    start = time.monotonic()
    while len(pings) < 5:
        pings.append(notify_socket.receive(timeout_s=5))
    elapsed = time.monotonic() - start
    assert set(pings) == {"WATCHDOG=1"}
    assert elapsed < 4.0  # about every 0.2 s (five take about 1 s), not once per receive timeout

    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    after = []
    while not after or not after[-1].startswith("STOPPING=1"):
        after.append(notify_socket.receive(timeout_s=10))
    assert set(after[:-1]) <= {"WATCHDOG=1"}
    assert process.proc.wait(30) == 0
    assert notify_socket.pending() == []  # nothing after STOPPING=1
