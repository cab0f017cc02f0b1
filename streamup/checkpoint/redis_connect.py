"""Connecting to Redis: a single server (`redis://`, `rediss://`, `unix://`) or a Sentinel-managed
master (`redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]`).

With Sentinel the client asks the sentinels for the current master on every (re)connection, so
after a failover the agent's retry loop lands on the new master by itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
# Connections one agent opens to Redis at most. Beyond it a command waits for a free one instead
# of opening a socket per concurrent command (a thousand files found at once would otherwise ask
# for a thousand descriptors). A Sentinel pool cannot wait: past it, a retryable error.
REDIS_MAX_CONNECTIONS = 16


def connect(url: str, **options: Any) -> tuple[aioredis.Redis, list[aioredis.Redis]]:
    """A client for `url`, and the sentinel clients behind it (to close with it); `options`
    are connection settings (timeouts, decoding, retry). ValueError for an unreadable URL."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_MAX_CONNECTIONS, timeout=None, **options
        )
        return aioredis.Redis.from_pool(pool), []
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /master-name or /master-name/db")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    # redis-py leaves Sentinel's constructor unannotated.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs={"password": password, "username": username}, **options
    )
    db = int(path[1]) if len(path) == 2 else 0
    client: aioredis.Redis = sentinel.master_for(
        path[0], redis_class=aioredis.Redis, db=db, password=password, username=username,
        max_connections=REDIS_MAX_CONNECTIONS,
    )  # fmt: skip
    return client, list(sentinel.sentinels)
