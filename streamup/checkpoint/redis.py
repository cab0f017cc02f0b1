"""The Redis checkpoint store (when REDIS_URL is set), on the seed's key schema.

Per stream: `stream:{id}:meta` (hash of the record, see `codec.stream_to_meta`),
`stream:{id}:parts` and `stream:{id}:checksums` (part number -> the part's record, see
`redis_parts.py`). A stream sits in the one status set its status names: `streams:active`,
`streams:pending_completion` (pending_completion, s3_completed), `streams:failed` (failed_*),
`streams:completed`; aborted_no_parts in none.

The event outbox (`streams:outbox`, `streams:outbox_queue`, `event:{id}:deliveries`,
`streams:events`) is `redis_outbox.py`'s; the finish script writes each stream's event, the
compare-and-set forget of a completed file the local-file action's.

A finished stream leaves `streams:completed_files` (path -> record JSON, pruned when the file goes)
and an entry in `streams:completed_log` (newest first, trimmed to the history limit; ids trimmed
off the log leave `streams:completed` too), so nothing else grows without bound.

`agent:{agent_id}:present` is a running agent's mark (PresenceMarks): a Redis without it was
flushed or restarted empty while the agent ran.

Leases, claims and `streams:paths` are `redis_leases.py`'s, and so are the write scripts: every
write is one Lua script, which first checks the stream's lease (the fence). redis-py errors are
translated here, once: connection trouble is retryable, anything else is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from streamup.checkpoint.codec import (
    check_finish,
    completed_from_json,
    completed_to_json,
    missing_stream,
    quote,
    stream_from_meta,
    stream_to_meta,
)
from streamup.checkpoint.outbox_codec import (
    check_event,
    check_forget_event,
    event_to_json,
    state_to_json,
)
from streamup.checkpoint.redis_connect import connect
from streamup.checkpoint.redis_leases import (
    CLAIM_SCRIPT,
    FINISH_SCRIPT,
    LEASE_TOKEN,
    PATHS,
    RECORD_PART_SCRIPT,
    REMOVE_PARTS_SCRIPT,
    SAVE_SCRIPT,
    Leases,
    claim_lease_arg,
    claim_result,
    lease_key,
    owner_of,
)
from streamup.checkpoint.redis_outbox import (
    FINISH_KEYS,
    OUTBOX,
    OUTBOX_QUEUE,
    SET_DELIVERY_SCRIPT,
    build_entries,
    deliveries_key,
)
from streamup.checkpoint.redis_parts import build_parts, checksums_key, part_values, parts_key
from streamup.errors import CheckpointCorrupt, CheckpointError
from streamup.models import (
    Claim,
    CompletedRecord,
    DeliveryState,
    OutboxEntry,
    OutboxEvent,
    PartRecord,
    Status,
    StreamRecord,
    iso,
    utc_now,
)

ACTIVE = "streams:active"
PENDING = "streams:pending_completion"
FAILED = "streams:failed"
COMPLETED = "streams:completed"
COMPLETED_FILES = "streams:completed_files"
COMPLETED_LOG = "streams:completed_log"
_STATUS_SETS = (ACTIVE, PENDING, FAILED, COMPLETED)
# An agent's mark (PresenceMarks) outlives a missed check by far, and a dead agent's goes away.
PRESENCE_TTL_S = 3600


def presence_key(agent_id: str) -> str:
    return f"agent:{agent_id}:present"


# Compare-and-set on a path's completed record: only while it names the same stream (ARGV[2]).
_OF_STREAM = """
local function of_stream()
  local current = redis.call('HGET', KEYS[1], ARGV[1])
  if not current then return false end
  local ok, record = pcall(cjson.decode, current)
  return ok and type(record) == 'table' and record['stream_id'] == ARGV[2]
end
"""
_UPDATE_OF_STREAM = (
    _OF_STREAM
    + """
if not of_stream() then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)
# KEYS[2..5]: FINISH_KEYS (the outbox). ARGV[3..7]: the event's id ('' for none), record JSON,
# type and body, and the events stream's MAXLEN. The event goes only with the record it ends;
# HSETNX: one already in the outbox keeps its body, its place and its one stream entry.
_FORGET_OF_STREAM = (
    _OF_STREAM
    + """
if not of_stream() then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] ~= '' and redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4]) == 1 then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[3])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*',
    'id', ARGV[3], 'type', ARGV[5], 'stream_id', ARGV[2], 'event', ARGV[6])
end
return 1
"""
)

# KEYS[1]: completed_files. ARGV: path, record JSON, in pairs. Each unless its path has one.
_RESTORE_COMPLETED = """
local written = 0
for i = 1, #ARGV, 2 do written = written + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
return written
"""
_RESTORE_BATCH = 1000  # records per script: Redis is not held up long by one

_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0


def meta_key(stream_id: str) -> str:
    return f"stream:{stream_id}:meta"


def stream_keys(stream_id: str) -> list[str]:
    """KEYS[1..4] of the fenced progress and finish scripts."""
    return [
        lease_key(stream_id),
        meta_key(stream_id),
        parts_key(stream_id),
        checksums_key(stream_id),
    ]


def status_set(status: Status) -> str | None:
    """The set a stream with `status` belongs to; None for aborted_no_parts."""
    if status is Status.ACTIVE:
        return ACTIVE
    if status in (Status.PENDING_COMPLETION, Status.S3_COMPLETED):
        return PENDING
    if status.is_failed:
        return FAILED
    return COMPLETED if status is Status.COMPLETED else None


def redact_url(url: str) -> str:
    """The URL without user, password or query string (which may carry a password)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _secrets(url: str) -> list[str]:
    """Every spelling of the URL's password (redis-py unquotes it before use)."""
    parts = urlsplit(url)
    found = [parts.password or ""]
    found += [value for name, value in parse_qsl(parts.query) if name == "password"]
    found += [unquote(secret) for secret in found]
    # Longest first, so a password containing another is masked whole.
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _corrupt(where: str, problem: str, value: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{where}: {problem}: {quote(value)}")


def save_call(stream: StreamRecord, lease: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of SAVE_SCRIPT (and CLAIM_SCRIPT, which adds a key) for `stream`."""
    sid = stream.stream_id
    target = status_set(stream.status)
    where = "0" if target is None else str(_STATUS_SETS.index(target) + 4)  # KEYS[4..7]
    fields = [text for pair in stream_to_meta(stream).items() for text in pair]
    final = "1" if stream.status.is_final else "0"
    keys = [lease_key(sid), meta_key(sid), PATHS, *_STATUS_SETS]
    return keys, [lease, sid, stream.path, where, final, *fields]


def _strings(reply: Any) -> dict[str, str]:
    # The client decodes responses, so every hash reply is str -> str (redis-py types it wider).
    return cast(dict[str, str], reply)


class RedisStore:
    """Checkpoint state in Redis; see the module docstring for the keys."""

    name = "redis"

    def __init__(self, url: str, *, history_limit: int = 1000) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, not {history_limit}")
        self.url = url
        self.safe_url = redact_url(url)
        self.history_limit = history_limit
        self._client: aioredis.Redis | None = None
        self._sentinels: list[aioredis.Redis] = []
        self._scripts: dict[str, AsyncScript] = {}
        # Lives across close/open: leases are in Redis, not in the connection.
        self._leases = Leases(self._script)

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            self._client, self._sentinels = connect(
                self.url,
                decode_responses=True,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=_COMMAND_TIMEOUT_S,
                # One immediate reconnect covers a pooled connection the server dropped; any
                # longer outage goes back to the caller, whose retry loop backs off.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise CheckpointError(
                f"REDIS_URL={self.safe_url} is not a Redis URL ({self._scrub(str(exc))}); use"
                " redis://[user:password@]host:port/db or"
                " redis+sentinel://[:password@]host:port[,host:port]/master-name[/db]"
            ) from exc
        try:
            await self.ping()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            await client.aclose()
        sentinels, self._sentinels = self._sentinels, []
        for sentinel in sentinels:
            await sentinel.aclose()

    async def ping(self) -> None:
        with self._translate("pinging"):
            await self._redis().ping()

    async def save_stream(self, stream: StreamRecord) -> None:
        sid = stream.stream_id
        keys, args = save_call(stream, self._leases.held(sid))
        with self._translate(f"saving stream {sid}"):
            reply = await self._script(SAVE_SCRIPT, keys, args)
        self._leases.check(sid, reply)

    async def record_part(
        self, stream_id: str, part: PartRecord, uploaded_bytes: int, last_activity_at: datetime
    ) -> None:
        if ":" in part.etag:
            raise CheckpointError(f"part {part.number} of stream {stream_id}: ETag with a colon")
        value, checksum = part_values(part)
        keys = stream_keys(stream_id)
        args = [self._leases.held(stream_id), str(part.number), value, checksum]
        args += [str(uploaded_bytes), iso(last_activity_at)]
        with self._translate(f"checkpointing part {part.number} of stream {stream_id}"):
            reply = await self._script(RECORD_PART_SCRIPT, keys, args)
        if not self._leases.check(stream_id, reply):
            raise missing_stream(stream_id)

    async def remove_parts(
        self, stream_id: str, numbers: Iterable[int], uploaded_bytes: int
    ) -> None:
        keys = stream_keys(stream_id)
        args = [self._leases.held(stream_id), str(uploaded_bytes)]
        args += [str(number) for number in numbers]
        with self._translate(f"removing parts of stream {stream_id}"):
            reply = await self._script(REMOVE_PARTS_SCRIPT, keys, args)
        if not self._leases.check(stream_id, reply):
            raise missing_stream(stream_id)

    async def load_stream(self, stream_id: str) -> StreamRecord | None:
        with self._translate(f"loading stream {stream_id}"):
            fields = _strings(await self._redis().hgetall(meta_key(stream_id)))
        if not fields:
            return None
        return stream_from_meta(stream_id, fields, where=meta_key(stream_id))

    async def load_parts(self, stream_id: str) -> dict[int, PartRecord]:
        with self._translate(f"loading parts of stream {stream_id}"):
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hgetall(parts_key(stream_id))
                pipe.hgetall(checksums_key(stream_id))
                parts, checksums = await pipe.execute()
        return build_parts(stream_id, _strings(parts), _strings(checksums))

    async def unfinished_streams(self) -> list[StreamRecord]:
        with self._translate("listing unfinished streams"):
            client = self._redis()
            ids = sorted(cast(set[str], await client.sunion([ACTIVE, PENDING, FAILED])))
            async with client.pipeline(transaction=False) as pipe:
                for stream_id in ids:
                    pipe.hgetall(meta_key(stream_id))
                replies = await pipe.execute()
        streams = [
            stream_from_meta(stream_id, _strings(reply), where=meta_key(stream_id))
            for stream_id, reply in zip(ids, replies, strict=True)
            # Empty: the stream finished between the two reads; nothing is left to resume.
            if reply
        ]
        unfinished = [s for s in streams if not s.status.is_final]
        return sorted(unfinished, key=lambda s: (s.started_at, s.stream_id))

    async def finish_stream(
        self, stream: StreamRecord, record: CompletedRecord, event: OutboxEvent | None = None
    ) -> None:
        check_finish(stream, record)
        check_event(stream, event)
        sid = stream.stream_id
        keys = [*stream_keys(sid), *_STATUS_SETS, COMPLETED_FILES, COMPLETED_LOG, PATHS]
        keys += FINISH_KEYS
        completed = "1" if record.status is Status.COMPLETED else "0"
        args = [self._leases.held(sid), sid, completed, record.path, completed_to_json(record)]
        args += [str(self.history_limit), stream.path]
        if event is None:
            args += ["", "", "", ""]
        else:
            args += [event.event_id, event_to_json(event), event.event_type, event.body]
        with self._translate(f"finishing stream {sid}"):
            reply = await self._script(FINISH_SCRIPT, keys, args)
        self._leases.check(sid, reply)
        self._leases.forget(sid)

    async def completed_files(self) -> dict[str, CompletedRecord]:
        with self._translate("loading completed files"):
            entries = _strings(await self._redis().hgetall(COMPLETED_FILES))
        return {
            path: completed_from_json(text, where=f"{COMPLETED_FILES} field {path!r}")
            for path, text in entries.items()
        }

    async def forget_completed_file(
        self, path: str, stream_id: str | None = None, event: OutboxEvent | None = None
    ) -> None:
        check_forget_event(stream_id, event)
        with self._translate("forgetting a completed file"):
            if stream_id is None:
                await self._redis().hdel(COMPLETED_FILES, path)
                return
            args = [path, stream_id, "", "", "", "", str(self.history_limit)]
            if event is not None:
                args[2:6] = [event.event_id, event_to_json(event), event.event_type, event.body]
            await self._script(_FORGET_OF_STREAM, [COMPLETED_FILES, *FINISH_KEYS], args)

    async def mark_present(self, agent_id: str) -> None:
        with self._translate("marking the agent present"):
            await self._redis().set(presence_key(agent_id), iso(utc_now()), ex=PRESENCE_TTL_S)

    async def still_marked(self, agent_id: str) -> bool:
        with self._translate("looking for the agent's mark"):
            return bool(await self._redis().expire(presence_key(agent_id), PRESENCE_TTL_S))

    async def completed_file(self, path: str) -> CompletedRecord | None:
        with self._translate("loading a completed file"):
            text = cast(str | None, await self._redis().hget(COMPLETED_FILES, path))
        return None if text is None else completed_from_json(text, where=COMPLETED_FILES)

    async def update_completed_file(self, record: CompletedRecord) -> bool:
        args = [record.path, record.stream_id, completed_to_json(record)]
        with self._translate("updating a completed file"):
            return bool(await self._script(_UPDATE_OF_STREAM, [COMPLETED_FILES], args))

    async def restore_completed_files(self, records: Sequence[CompletedRecord]) -> int:
        pairs = [text for r in records for text in (r.path, completed_to_json(r))]
        written = 0
        with self._translate(f"restoring {len(records)} completed files"):
            for start in range(0, len(pairs), 2 * _RESTORE_BATCH):
                batch = pairs[start : start + 2 * _RESTORE_BATCH]
                written += int(await self._script(_RESTORE_COMPLETED, [COMPLETED_FILES], batch))
        return written

    async def recent_completions(self, limit: int) -> list[CompletedRecord]:
        if limit <= 0:
            return []
        with self._translate("loading recent completions"):
            entries = cast(list[str], await self._redis().lrange(COMPLETED_LOG, 0, limit - 1))
        return [
            completed_from_json(text, where=f"{COMPLETED_LOG}[{index}]")
            for index, text in enumerate(entries)
        ]

    # -- the event outbox (see redis_outbox.py) ----------------------------------------------------

    async def outbox(self) -> list[OutboxEntry]:
        with self._translate("reading the event outbox"):
            client = self._redis()
            queue = cast(
                list[tuple[str, float]], await client.zrange(OUTBOX_QUEUE, 0, -1, withscores=True)
            )
            if not queue:
                return []
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(OUTBOX, [event_id for event_id, _ in queue])
                for event_id, _ in queue:
                    pipe.hgetall(deliveries_key(event_id))
                records, *states = await pipe.execute()
        return build_entries(queue, records, [_strings(s) for s in states])

    async def set_delivery(self, event_id: str, sink: str, state: DeliveryState) -> None:
        keys = [OUTBOX, deliveries_key(event_id)]
        with self._translate(f"recording a delivery of event {event_id}"):
            await self._script(SET_DELIVERY_SCRIPT, keys, [event_id, sink, state_to_json(state)])

    async def remove_event(self, event_id: str) -> None:
        with self._translate(f"removing event {event_id} from the outbox"):
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hdel(OUTBOX, event_id)
                pipe.zrem(OUTBOX_QUEUE, event_id)
                pipe.delete(deliveries_key(event_id))
                await pipe.execute()

    # -- many agents: claims and leases (see redis_leases.py) -------------------------------------

    async def claim_stream(
        self, stream: StreamRecord, *, owner: str | None = None, ttl_s: float = 0.0
    ) -> tuple[Claim, str]:
        # ARGV[1] names who takes the new stream's lease in the same step ('' for nobody).
        keys, args = save_call(stream, claim_lease_arg(owner, ttl_s))
        with self._translate(f"claiming {stream.path!r} as stream {stream.stream_id}"):
            reply = await self._script(CLAIM_SCRIPT, [*keys, COMPLETED_FILES, LEASE_TOKEN], args)
        claim, stream_id, token = claim_result(reply)
        if token is not None and owner is not None:
            self._leases.hold(stream_id, f"{owner}|{token}")
        return claim, stream_id

    async def acquire_lease(self, stream_id: str, owner: str, ttl_s: float) -> int | None:
        with self._translate(f"taking the lease of stream {stream_id}"):
            return await self._leases.acquire(stream_id, owner, ttl_s)

    async def take_lease(
        self, stream_id: str, owner: str, ttl_s: float, *, from_owner: str
    ) -> int | None:
        with self._translate(f"taking the lease of stream {stream_id} from {from_owner}"):
            return await self._leases.take(stream_id, owner, ttl_s, from_owner)

    async def renew_lease(self, stream_id: str, ttl_s: float) -> bool:
        with self._translate(f"renewing the lease of stream {stream_id}"):
            return (await self._leases.renew([stream_id], meta_key, ttl_s))[stream_id]

    async def renew_leases(self, stream_ids: Sequence[str], ttl_s: float) -> dict[str, bool]:
        with self._translate(f"renewing the leases of {len(stream_ids)} streams"):
            return await self._leases.renew(stream_ids, meta_key, ttl_s)

    async def release_lease(self, stream_id: str) -> None:
        with self._translate(f"releasing the lease of stream {stream_id}"):
            await self._leases.release(stream_id)

    async def lease_owner(self, stream_id: str) -> str | None:
        with self._translate(f"reading the lease of stream {stream_id}"):
            value = cast(str | None, await self._redis().get(lease_key(stream_id)))
        return None if value is None else owner_of(value)

    # -- plumbing ---------------------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise CheckpointError(f"the Redis store {self.safe_url} is not open")
        return self._client

    async def _script(self, source: str, keys: list[str], args: list[str]) -> Any:
        """Run a Lua script by its SHA (redis-py loads it again after a server restart)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis().register_script(source)
        return await script(keys=keys, args=args)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """redis-py errors -> CheckpointError, with the URL and message free of credentials."""
        try:
            yield
        except (rex.AuthenticationError, rex.AuthorizationError) as exc:
            # ConnectionError subclasses, but a wrong password does not fix itself.
            hint = "; check the user and password in REDIS_URL"
            raise self._error(action, exc, hint) from exc
        except (rex.ConnectionError, rex.TimeoutError) as exc:  # includes BusyLoadingError
            raise self._error(action, exc, "", retryable=True) from exc
        except rex.ReadOnlyError as exc:  # a replica during a failover; a primary comes back
            raise self._error(action, exc, "", retryable=True) from exc
        except rex.RedisError as exc:
            raise self._error(action, exc, "") from exc
        except OSError as exc:  # out of descriptors while connecting, a socket error unwrapped
            raise self._error(action, exc, "", retryable=True) from exc

    def _error(
        self, action: str, exc: Exception, hint: str, *, retryable: bool = False
    ) -> CheckpointError:
        detail = self._scrub(str(exc) or type(exc).__name__)
        return CheckpointError(
            f"Redis at {self.safe_url}: {action} failed ({detail}){hint}", retryable=retryable
        )

    def _scrub(self, text: str) -> str:
        for secret in _secrets(self.url):
            text = text.replace(secret, "***")
        return text
