"""The peers streamup is compared with: `aws s3 cp` (awscli) and `rclone copyto`, each run with
its own defaults against the same moto server, configured through the environment only.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness import ACCESS_KEY, REGION, SECRET_KEY, clean_env

# A private awscli installed next to the benchmarks wins over the one on PATH (see README).
_PEER_VENV = Path(__file__).resolve().parent / ".venv-peers" / "bin"


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float


def run_timed(argv: list[str], env: dict[str, str]) -> Timed:
    """Run a command to completion; its wall time and the CPU it and its children used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu)


def tool_version(argv: list[str]) -> str | None:
    """First line a `--version`-style command prints, or None when the tool is missing."""
    try:
        done = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def find(name: str) -> str | None:
    private = _PEER_VENV / name
    return str(private) if private.exists() else shutil.which(name)


@dataclass(frozen=True)
class Peer:
    """One peer tool: how to call it, with which environment, and how to show the call."""

    name: str
    binary: str
    endpoint: str
    # awscli with AWS_REQUEST_CHECKSUM_CALCULATION=when_required sends no checksum, as streamup:
    # moto then takes the same (slow) path to complete the upload.
    no_checksum: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}, no checksum" if self.no_checksum else self.name

    def argv(self, path: Path, bucket: str, key: str) -> list[str]:
        if self.name == "aws":
            target = f"s3://{bucket}/{key}"
            return [self.binary, "--endpoint-url", self.endpoint, "s3", "cp",
                    "--only-show-errors", str(path), target]  # fmt: skip
        # rclone 1.60 HEADs the new object with `?versionId=null`, which moto answers 400, and
        # then repeats the whole copy: --s3-no-head skips that HEAD, --retries 1 any repeat.
        return [self.binary, "copyto", "--retries", "1", "--s3-no-head", str(path),
                f"s3:{bucket}/{key}"]  # fmt: skip

    def env(self) -> dict[str, str]:
        if self.name == "aws":
            env = clean_env(
                AWS_ACCESS_KEY_ID=ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_DEFAULT_REGION=REGION,
            )
            if self.no_checksum:
                env["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
            return env
        return clean_env(
            RCLONE_CONFIG_S3_TYPE="s3",
            RCLONE_CONFIG_S3_PROVIDER="Other",
            RCLONE_CONFIG_S3_ENDPOINT=self.endpoint,
            RCLONE_CONFIG_S3_ACCESS_KEY_ID=ACCESS_KEY,
            RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        )

    def run(self, path: Path, bucket: str, key: str) -> Timed:
        return run_timed(self.argv(path, bucket, key), self.env())

    def command(self, path: str, bucket: str, key: str) -> str:
        """The command line as shown in the report (credentials in the environment)."""
        shown = [part.replace(self.endpoint, "http://127.0.0.1:PORT")
                 for part in self.argv(Path(path), bucket, key)]  # fmt: skip
        shown[0] = self.name
        if self.no_checksum:
            shown.insert(0, "AWS_REQUEST_CHECKSUM_CALCULATION=when_required")
        return " ".join(shown)

    def version(self) -> str | None:
        flag = ["--version"] if self.name == "aws" else ["version"]
        return tool_version([self.binary, *flag])

    @property
    def defaults(self) -> str:
        if self.no_checksum:
            return "8 MiB parts, 10 requests in flight, no checksum"
        if self.name == "aws":
            return "defaults: 8 MiB parts, 10 requests in flight, CRC32 checksums"
        return "defaults: 5 MiB parts, 4 parts in flight, MD5 of the whole file first"

    def without_checksum(self) -> Peer:
        return replace(self, no_checksum=True)


def available(endpoint: str) -> list[Peer]:
    """The peers installed on this machine (a missing one is left out, not fatal): awscli as it
    comes and without checksums, then rclone."""
    found = []
    for name in ("aws", "rclone"):
        binary = find(name)
        if binary is not None:
            peer = Peer(name, binary, endpoint)
            if peer.version() is not None:
                found.append(peer)
                if name == "aws":
                    found.append(peer.without_checksum())
    return found
