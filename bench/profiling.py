"""Where the time goes: `py-spy record` on a running process, summarised.

py-spy (`pip install py-spy` into the venv the benchmarks run from; not a project dependency)
samples the Python stacks of every thread 100 times a second without pausing the process
(`--nonblocking`; `--native`, which would show C frames, pauses it for every sample and here
doubled the copy's time, and then samples idle threads too). Time in C (hashing, copies,
socket writes) is charged to the Python line that called it. Threads py-spy takes for idle are
not sampled, but a thread waiting for the GIL is: shares of samples, not of CPU time. The raw
output (collapsed stacks, one line per distinct stack with its sample count) stays in
bench/results; the summary goes into the report: what the samples were doing, the threads, and
the functions they were in, by own samples and with what they call.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RATE_HZ = 100
TOP = 12
# py-spy's frame: `func (path/to/file.py:123)`, a native `symbol (file.c:12)` or `0x7f.. (lib.so)`.
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\w+)\)(?:: (?P<name>.*))?$")

# What a sample was doing: the first rule matched walking its stack from the leaf to the root
# (a sample whose innermost Python frame waits is `waiting`; one whose innermost frame is the
# thread pool's `_WorkItem.run` is in a C function handed straight to a thread: in streamup that
# is `asyncio.to_thread(sha256.update, ...)`, files/hashing.py).
WAITING = ("select (selectors", "_worker (concurrent/futures", "wait (threading",
           "WorkerThread.run (anyio", "get (queue", "_rust_notify")  # fmt: skip
HANDED_TO_THREAD = "C code handed straight to a thread (SHA-256 update)"
AGENT_CATEGORIES = (
    ("MD5", ("md5",)),
    ("SHA-256", ("sha256",)),
    ("CRC32C", ("crc32c",)),
    ("reading the file", ("SourceFile._read", "pread")),
    ("HTTP client (aiohttp, aiobotocore, botocore)", ("aiohttp/", "botocore/")),
    ("checkpoints (SQLite)", ("sqlite",)),
    ("logging (structlog)", ("structlog/",)),
    ("streamup's own Python", ("(streamup/",)),
    ("event loop and thread hand-offs (asyncio)", ("asyncio/", "concurrent/futures")),
)
MOTO_CATEGORIES = (
    ("MD5 of each part (its ETag)", ("md5", "etag (moto")),
    ("CRC checksums", ("crc", "compute_checksum")),
    ("CompleteMultipartUpload (joining the parts)", ("complete (moto", "complete_multipart")),
    ("spooling bodies to temporary files", ("tempfile",)),
    ("reading request bodies", ("socket.py", "wsgi.py")),
    ("moto's S3 code", ("moto/",)),
    ("werkzeug / flask request handling", ("werkzeug/", "flask/", "http/server", "socketserver")),
)


# Frames almost every sample of a thread is inside: entry points, thread and loop plumbing.
_PLUMBING = ("<module> (", "_run_module_as_main", "_run_code", "run (asyncio/",
             "run_until_complete", "run_forever", "_run_once", "_bootstrap",
             "run (threading.py)", "_worker (concurrent/", "_run (asyncio/events.py)",
             "main (streamup/", "_WorkItem.run", "thread_run (")  # fmt: skip


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, raw_path: Path) -> Iterator[None]:
    """Sample `pid` while the block runs; raw stacks to `raw_path`."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    argv = [binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
            "--threads", "--nonblocking", "--output", str(raw_path)]  # fmt: skip
    log = raw_path.with_suffix(".log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    time.sleep(1.0)  # attached (py-spy reads the interpreter's state first)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _name(frame: str) -> str:
    """`func (file)` without the line number; paths shortened to the package part."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def _is_python(name: str) -> bool:
    return name.endswith(".py)") or "(<frozen " in name


def _own(names: list[str]) -> str:
    """The function a sample is charged to: its innermost Python frame, and the first named C
    function it was in below that (`md5_of (streamup/checksums.py) → EVP_hash (...)`)."""
    python = [i for i, n in enumerate(names) if _is_python(n)]
    below = names[python[-1] + 1 :] if python else names
    native = next((n for n in below if not n.startswith("0x")), below[-1] if below else "")
    if not python:
        return native
    return f"{names[python[-1]]} → {native}" if native else names[python[-1]]


def _category(names: list[str], categories: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    python = [n for n in names if _is_python(n)]
    if python and any(w in python[-1] for w in WAITING):
        return "waiting (queues, select)"
    if python and python[-1].startswith("_WorkItem.run ("):
        return HANDED_TO_THREAD
    for name in reversed(names):
        lowered = name.lower()
        for label, needles in categories:
            if any(needle.lower() in lowered for needle in needles):
                return label
    return "other"


def _thread_group(frame: str) -> str:
    """`thread (123): asyncio_2` → `asyncio_N`: threads of one pool are counted together."""
    match = _THREAD.match(frame)
    if match is None:
        return "?"
    return re.sub(r"\d+", "N", match["name"]) if match["name"] else "unnamed"


def summarise(
    raw_path: Path,
    seconds: float,
    categories: tuple[tuple[str, tuple[str, ...]], ...],
    package: str,
) -> dict[str, Any]:
    """Samples per thread group, by category, the top functions by own samples, and the top
    functions of `package` (streamup, moto) by the samples inside them."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    threads: dict[str, set[str]] = {}
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        group = _thread_group(frames[0])
        threads.setdefault(group, set()).add(frames[0].split(":")[0])
        names = [_name(f) for f in frames if not f.startswith(("thread (", "process "))]
        total += count
        groups[group] += count
        by_category[_category(names, categories)] += count
        own[_own(names)] += count
        for name in {n for n in names if f"({package}/" in n}:
            inside[name] += count
    return {
        "rate_hz": RATE_HZ,
        "seconds": seconds,
        "samples": total,
        "threads": [
            {"group": g, "threads": len(threads[g]), "samples": n} for g, n in groups.most_common()
        ],
        "categories": by_category.most_common(),
        "own": own.most_common(TOP),
        "package": package,
        "inside": [
            (n, c) for n, c in inside.most_common(TOP * 3) if not any(p in n for p in _PLUMBING)
        ][:TOP],
    }
