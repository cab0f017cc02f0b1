"""Ceph's RADOS Gateway for tests: a throwaway one-node Ceph cluster on loopback.

One monitor, one OSD that keeps its objects in memory (memstore), no manager, no authentication
inside the cluster, and radosgw in front of it with one S3 user. Every port is a free one picked
at start (the monitor's two included, through the monmap and `mon host`), every file lives under
the given folder, so two of these run side by side on one machine without meeting (a port
taken meanwhile makes its daemon exit, and the start fails saying so, with the daemon's log).
Started once per test session, in about 2-4 s on a 2-core machine; each test uses its own bucket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import boto3

from tests.servers import free_port, stop, wait_for_port

T = TypeVar("T")
BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
PR_SET_PDEATHSIG = 1  # prctl(2)
START_DEADLINE_S = 120.0  # below pytest's 180 s per test, so the reason is ours, not a timeout


class RgwError(RuntimeError):
    """RGW did not come up; the message says which step failed and ends with its log."""


@dataclass(frozen=True)
class Rgw:
    endpoint: str
    version: str
    started_in_s: float
    base: Path


def _config(base: Path, fsid: str, mon_addrs: str, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon initial members = a
mon host = {mon_addrs}
public addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
# radosgw defaults to secure monitor sessions, which need cephx keys: with auth none, crc.
ms mon client mode = crc
ms client mode = crc
keyring = {base}/keyring
log file = {base}/log/$name.log
log to stderr = false
err to stderr = true
admin socket = {base}/run/$name.$pid.asok
pid file = {base}/run/$name.pid
run dir = {base}/run
crash dir = {base}/crash
# One OSD holds every object: pools of one copy, few placement groups, no health nagging.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# The gateway creates its pools one monitor command at a time; each waits for a proposal
# (1 s by default): proposals at once make the start about ten seconds shorter.
paxos propose interval = 0.01
paxos min wait = 0.001

[mon]
mon data = {base}/mon/$cluster-$id

[osd]
osd data = {base}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {8 * 1024**3}

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {base}/rgw
rgw dns name = 127.0.0.1
"""


class _Cluster:
    """The daemons of one cluster and the commands that drive it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "ceph.conf"
        self.env = dict(os.environ, CEPH_CONF=str(self.conf))
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str, timeout_s: float = 30) -> str:
        result = subprocess.run(
            [*args[:1], "-c", str(self.conf), *args[1:]],
            env=self.env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if result.returncode != 0:
            raise RgwError(f"`{' '.join(args)}` failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def start(self, name: str, *args: str) -> None:
        """Start a daemon in the foreground (`-f`): it is our child, stopped by `stop()`, and
        killed by the kernel if the test run dies first (no daemon left holding ports)."""
        stderr = (self.base / "log" / f"{name}.stderr").open("ab")
        self.daemons[name] = subprocess.Popen(
            [args[0], "-f", "-c", str(self.conf), *args[1:]],
            env=self.env, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent,
        )  # fmt: skip
        stderr.close()

    def check_alive(self) -> None:
        for name, proc in self.daemons.items():
            if proc.poll() is not None:
                raise RgwError(f"{name} exited with code {proc.returncode}{self.log_tail(name)}")

    def log_tail(self, name: str) -> str:
        lines: list[str] = []
        for path in sorted((self.base / "log").glob(f"*{name.split('.')[0]}*")):
            lines += [f"--- {path}", *path.read_text(errors="replace").splitlines()[-15:]]
        return "\n" + "\n".join(lines) if lines else ""

    def stop(self) -> None:
        # The gateway first, the monitor last: each stops cleanly while the ones below are up.
        for proc in reversed(list(self.daemons.values())):
            stop(proc)


def _retry(
    step: str, cluster: _Cluster, attempt: Callable[[], T], deadline: float, logs: str = "rgw"
) -> T:
    """Call `attempt()` until it returns without error, while the daemons live."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            return attempt()
        except Exception as exc:  # the cluster is still settling: try again
            last = exc
        time.sleep(0.05)
    raise RgwError(f"RGW start: {step} did not succeed in time ({last}){cluster.log_tail(logs)}")


@contextlib.contextmanager
def rgw_server(base: Path, *, access_key: str, secret_key: str) -> Iterator[Rgw]:
    """Start a Ceph cluster with radosgw under `base`; yield its S3 endpoint; tear it down."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise RgwError(
            f"Ceph RGW is not installed (missing {', '.join(missing)}): run `bash scripts/setup.sh`"
            " (apt-get install ceph-mon ceph-osd radosgw ceph-common)"
        )
    started = time.monotonic()
    deadline = started + START_DEADLINE_S
    for sub in ("mon", "osd", "rgw", "log", "run", "crash"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    v2_port, v1_port, rgw_port = free_port(), free_port(), free_port()
    mon_addrs = f"[v2:127.0.0.1:{v2_port},v1:127.0.0.1:{v1_port}]"
    fsid = str(uuid.uuid4())
    cluster = _Cluster(base)
    cluster.conf.write_text(_config(base, fsid, mon_addrs, rgw_port))
    try:
        monmap = str(base / "monmap")
        cluster.run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", mon_addrs, monmap)
        cluster.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        cluster.start("mon.a", "ceph-mon", "-i", "a")
        wait_for_port(v2_port, cluster.daemons["mon.a"], deadline_s=30)
        osd_uuid = str(uuid.uuid4())
        osd_id = _retry(
            "registering the OSD", cluster, deadline=deadline, logs="mon",
            attempt=lambda: cluster.run("ceph", "--connect-timeout", "10", "osd", "new", osd_uuid)
            .strip(),
        )  # fmt: skip
        (base / "osd" / f"ceph-{osd_id}").mkdir()
        cluster.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        cluster.start(f"osd.{osd_id}", "ceph-osd", "-i", osd_id)
        # A gateway started before the OSD is up sometimes stalls 5 s on its first pool.
        osd_log = base / "log" / f"osd.{osd_id}.log"
        _retry("the OSD booting", cluster, deadline=deadline, logs="osd",
               attempt=lambda: _expect_line(osd_log, "state: booting -> active"))  # fmt: skip
        cluster.start("rgw.a", "radosgw", "-n", "client.rgw.a")
        _retry(
            "the gateway listening", cluster, deadline=deadline,
            attempt=lambda: wait_for_port(rgw_port, cluster.daemons["rgw.a"], deadline_s=1),
        )  # fmt: skip
        cluster.run(
            "radosgw-admin", "user", "create", "--uid=streamup-test", "--display-name=streamup",
            f"--access-key={access_key}", f"--secret={secret_key}",
        )  # fmt: skip
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _retry("a first PUT and GET", cluster, deadline=deadline,
               attempt=lambda: _smoke(endpoint, access_key, secret_key))  # fmt: skip
        version = subprocess.run(
            ["radosgw", "--version"], capture_output=True, text=True, check=False
        ).stdout.split("(")[0].strip()  # fmt: skip
        yield Rgw(endpoint, version, time.monotonic() - started, base)
    finally:
        cluster.stop()


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _expect_line(log: Path, text: str) -> None:
    if not log.exists() or text not in log.read_text(errors="replace"):
        raise RgwError(f"{log.name} does not say {text!r} yet")


def _smoke(endpoint: str, access_key: str, secret_key: str) -> None:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
    )  # fmt: skip
    try:
        s3.create_bucket(Bucket="streamup-smoke")
        s3.put_object(Bucket="streamup-smoke", Key="hello", Body=b"hello")
        body = s3.get_object(Bucket="streamup-smoke", Key="hello")["Body"].read()
        if body != b"hello":
            raise RgwError(f"RGW answered {body!r} for what was written as b'hello'")
        s3.delete_object(Bucket="streamup-smoke", Key="hello")
        s3.delete_bucket(Bucket="streamup-smoke")
    finally:
        s3.close()
