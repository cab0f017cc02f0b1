"""Redis load of the lease renewals of one agent holding many leases (issue 15's leftover).

One `stream.ownership.Ownership` keeps `--leases` leases on a throwaway redis-server for
`--seconds`; Redis' own counters say how many round trips (script runs) and commands (counting
those the scripts ran) it took per second. Before and after a change, run it against each tree:

    .venv/bin/python bench/leases.py                            # this tree
    PYTHONPATH=/tmp/main-tree .venv/bin/python bench/leases.py  # another (git archive of main)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: `tests` only

import streamup
from streamup.checkpoint.redis import RedisStore
from streamup.stream.ownership import Ownership
from tests.servers import free_port, start_redis, stop
from tests.test_checkpoint_contract import make_stream


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, server_pid: int, leases: int, ttl_s: float, seconds: float
) -> dict[str, Any]:
    store = RedisStore(url)
    await store.open()
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    stopping = asyncio.Event()

    async def take_over(_: object) -> None:
        return None

    ownership = Ownership(store, agent_id="bench:1", ttl_s=ttl_s, stopping=stopping,
                          take_over=take_over)  # fmt: skip
    lost: list[str] = []
    try:
        for i in range(leases):
            stream = make_stream(f"s{i:05d}", path=f"/watch/s{i:05d}.mp4")
            await store.claim_stream(stream, owner="bench:1", ttl_s=ttl_s)
        for i in range(leases):
            ownership.keep(f"s{i:05d}", on_lost=lambda i=i: lost.append(f"s{i:05d}"))  # type: ignore[misc]
        await asyncio.sleep(ttl_s / 6)  # counted from mid-period on: the steady state
        await raw.config_resetstat()
        started, cpu_before = time.monotonic(), cpu_s(server_pid)
        await asyncio.sleep(seconds)
        elapsed, server_cpu = time.monotonic() - started, cpu_s(server_pid) - cpu_before
        stats = await raw.info("commandstats")
        stopping.set()
        await ownership.release_all()
    finally:
        await raw.aclose()
        await store.close()
    scripts = sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in ("evalsha", "eval"))
    commands = sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_info")
    )
    return {
        "streamup": str(Path(streamup.__file__).parent),
        "leases": leases,
        "ttl_s": ttl_s,
        "seconds": round(elapsed, 2),
        "round_trips_per_s": round(scripts / elapsed, 2),
        "commands_per_s": round(commands / elapsed, 2),
        "redis_cpu_ms_per_s": round(server_cpu * 1000 / elapsed, 1),
        "lost": len(lost),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=15.0, help="LEASE_TTL_SECONDS (default 15)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        proc = start_redis(Path(workdir), port)
        try:
            result = asyncio.run(
                measure(
                    f"redis://127.0.0.1:{port}/0", proc.pid, args.leases, args.ttl, args.seconds
                )
            )
        finally:
            stop(proc)
    for name, value in result.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
