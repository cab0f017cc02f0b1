"""What the figures were measured on: the machine and every tool's version."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from peers import Peer


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _commit() -> str:
    """The streamup commit measured, `+ local changes` when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "streamup")
    return f"{commit} + local changes" if dirty else commit


def describe(peers: list[Peer]) -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python, and the versions of streamup, moto and the peers."""
    packages = {}
    for name in ("streamup", "moto", "boto3", "botocore", "aiobotocore", "crc32c", "awscrt"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "kernel": f"{platform.system()} {platform.release()}",
        "commit": _commit(),
        "python": platform.python_version(),
        "packages": packages,
        "peers": {p.name: p.version() for p in peers if not p.no_checksum},
        "awscrt_beside_aws": {
            p.binary: _awscrt_beside(p.binary)
            for p in peers
            if p.name == "aws" and not p.no_checksum
        },
    }


def _awscrt_beside(script: str) -> str:
    """awscrt's version in the Python environment an `aws` script runs in, or `not installed`
    (with awscrt, awscli's CRC32 and signing go through the CRT, and its CPU changes)."""
    try:
        with open(script, "rb") as handle:
            first = handle.readline().decode(errors="replace")
    except OSError:
        return "unknown"
    if not first.startswith("#!"):
        return "unknown"  # a shim or a binary: its interpreter cannot be told from here
    python = first[2:].strip().split()[0]
    probe = "import importlib.metadata as m; print(m.version('awscrt'))"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "not installed"
