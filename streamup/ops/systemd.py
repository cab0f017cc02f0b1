"""systemd's notification protocol (sd_notify(3)), spoken directly: one datagram per message to
the socket named by $NOTIFY_SOCKET.

With `Type=notify` systemd counts the service as started when READY=1 arrives, so units ordered
after it wait until the agent really watches its folder and answers /healthz. With `WatchdogSec=`
it kills and restarts an agent that stops sending WATCHDOG=1: the pings come from the event loop,
so a loop that hangs (a blocking call, a deadlock) is restarted, while an S3 or Redis outage,
which the agent rides out by retrying, is not. Outside systemd (no NOTIFY_SOCKET) nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

WATCHDOG_PINGS_PER_TIMEOUT = 2  # sd_watchdog_enabled(3): ping at half the timeout


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify message ("READY=1", "STOPPING=1", ...); True when it was sent.

    A missing or unreachable socket is not an error: the agent works the same without systemd.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # Linux abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a transport this agent does not speak (vsock:)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd asked for no watchdog (or asked
    another process: WATCHDOG_PID names the one it watches)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        timeout_us = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if timeout_us <= 0:
        return None
    return timeout_us / 1_000_000 / WATCHDOG_PINGS_PER_TIMEOUT


async def supervise(
    ready: asyncio.Event,
    stopping: asyncio.Event,
    status: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """READY=1 (with `status`) once `ready` is set, WATCHDOG=1 while the loop runs, STOPPING=1
    once `stopping` is set. Returns at once when not started by systemd."""
    if not environ.get("NOTIFY_SOCKET"):
        return
    waiting = {asyncio.ensure_future(ready.wait()), asyncio.ensure_future(stopping.wait())}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()
    if not stopping.is_set():
        notify(f"READY=1\nSTATUS={status}", environ)
        interval_s = watchdog_interval_s(environ)  # None: no pings, wait for the stop
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
            if not stopping.is_set():
                notify("WATCHDOG=1", environ)
    notify("STOPPING=1\nSTATUS=stopping: in-flight parts are landing", environ)
