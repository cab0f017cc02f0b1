"""The agent's I/O seams: the checkpoint store the settings ask for, the context every stream
shares (S3, the store, the part slots and pacer, the descriptor budget), and their patient
opening at start-up: a server that answers 5xx or 429, refuses the connection or times out is
waited for up to STARTUP_TIMEOUT_SECONDS (0: forever), /healthz answering "starting"; a
permanent error ends the start at once, as a `ConfigError` naming the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from streamup.checkpoint import CheckpointStore
from streamup.checkpoint.redis_connect import REDIS_MAX_CONNECTIONS
from streamup.errors import CheckpointError, ConfigError, StorageError, StreamupError
from streamup.files.budget import FileBudget, files_budget, open_files_limit
from streamup.files.liveness import AgentMarks
from streamup.ops.startup import StartupWait
from streamup.retry import retrying
from streamup.s3.client import S3Storage
from streamup.s3.opening import (
    STARTUP_BACKOFF,
    check_object_options,
    integrity,
    open_bucket,
    s3_connections,
)
from streamup.s3.pacing import Pacer, PrioritySlots
from streamup.settings import Settings
from streamup.stream.ownership import host_of
from streamup.stream.worker import StreamContext

log = structlog.get_logger("streamup")


def make_store(settings: Settings, *, exclusive: bool = True) -> CheckpointStore:
    """Redis when REDIS_URL is set, else the embedded SQLite store under STATE_DIR."""
    if settings.redis_url is not None:
        from streamup.checkpoint.redis import RedisStore

        return RedisStore(
            settings.redis_url.get_secret_value(), history_limit=settings.completed_history_limit
        )
    from streamup.checkpoint.sqlite import SqliteStore

    return SqliteStore(
        settings.state_dir, history_limit=settings.completed_history_limit, exclusive=exclusive
    )


def pooled_descriptors(settings: Settings) -> int:
    """Descriptors the connection pools may hold: S3's, and Redis's (checkpoint.redis)."""
    redis = REDIS_MAX_CONNECTIONS if settings.redis_url is not None else 0
    return s3_connections(settings) + redis


def stream_context(
    settings: Settings, store: CheckpointStore, storage: S3Storage, stopping: asyncio.Event
) -> StreamContext:
    """What every stream worker shares, as the settings ask."""
    pacer = Pacer(settings.bandwidth) if settings.bandwidth.limited else None
    return StreamContext(
        storage=storage,
        store=store,
        part_slots=PrioritySlots(
            settings.upload_concurrency,
            keep_one_for_live=lambda: pacer is not None and pacer.rate is not None,
        ),
        pacer=pacer,
        window=settings.upload_concurrency,
        timeout_s=settings.stream_timeout_seconds,
        stopping=stopping,
        ffprobe_path=settings.ffprobe_path,
        ffprobe_timeout_s=settings.ffprobe_timeout_seconds,
        lease_ttl_s=settings.lease_ttl_seconds,
        agent_host=host_of(settings.agent_id),
        object_options=settings.object_options,
        files=FileBudget(files_budget(open_files_limit(), pooled_descriptors(settings))),
    )


async def open_unless(stop: asyncio.Event, opening: Coroutine[Any, Any, None]) -> bool:
    """`opening` awaited, given up (False) when asked to stop while it waits for a server."""
    opened = asyncio.create_task(opening)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait((opened, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if opened.done():
        opened.result()
        return True
    opened.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await opened
    log.info("agent.stopped", during="start-up")
    return False


async def open_seams(
    settings: Settings, ctx: StreamContext, waiting: StartupWait, marks: AgentMarks
) -> None:
    """Open the store and S3 (ctx's), patiently, one log line per episode of waiting; a
    permanent error (403, a bad bucket name, bad credentials) ends the start at once."""
    if settings.redis_url is not None:
        marks.hold()  # agents sharing a store: tell a restarted agent we are gone
    timeout_s = settings.startup_timeout_seconds
    try:
        async with asyncio.timeout(timeout_s or None):
            await _open_patiently(settings, ctx, waiting)
    except TimeoutError:
        await close_seams(ctx)
        raise ConfigError(
            f"gave up starting after STARTUP_TIMEOUT_SECONDS={timeout_s:g}:"
            f" {waiting.given_up()}; fix the server or raise STARTUP_TIMEOUT_SECONDS"
            " (0 waits forever)"
        ) from None
    except BaseException as exc:
        await close_seams(ctx)
        if isinstance(exc, StorageError):
            raise ConfigError(
                f"S3_BUCKET_NAME={settings.s3_bucket_name} cannot be used: {exc}"
            ) from None
        if isinstance(exc, CheckpointError):
            raise ConfigError(str(exc)) from None
        raise
    waiting.over()


async def _open_patiently(settings: Settings, ctx: StreamContext, waiting: StartupWait) -> None:
    note = waiting.note
    await retrying(ctx.store.open, backoff=STARTUP_BACKOFF, on_retry=note("checkpoint store"))
    await open_bucket(ctx.storage, settings, note)
    ctx.integrity = await integrity(ctx.storage, settings, note)
    await check_object_options(ctx.storage, settings, note)


async def close_seams(ctx: StreamContext) -> None:
    """Close S3 and the store after a failed start-up; their own errors do not hide it."""
    with contextlib.suppress(StreamupError, OSError):
        await ctx.storage.close()
    with contextlib.suppress(StreamupError, OSError):
        await ctx.store.close()
