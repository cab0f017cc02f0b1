"""Many agents, one Redis: stream leases, the fence every write passes, and claims.

Keys, next to the seed's (see `redis.py`):
- `stream:{id}:lease`: `"{owner}|{token}"` with a PX expiry, naming the agent that works the
  stream. `token` comes from `INCR streams:lease_token`, so it grows with every acquisition.
- `streams:paths`: path -> id of the stream a claim finds for that path (the latest one claimed;
  kept by `save_stream` too, dropped by `finish_stream` while it still names the finished stream).

Fencing. A store remembers the lease value it holds per stream, and every write script starts with
the same check, so nothing can come between the check and the write: the lease key must hold our
value, or be missing (it expired and nobody took it, so the stream is still ours). Another value
means another agent took the stream over: the script writes nothing and hands back the holder's
value, and the store raises LeaseLost. Writes for a stream the store holds no lease on are not
checked: that is the single-agent path.

The write scripts live here rather than in `redis.py` because each one starts with the fence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamup.errors import CheckpointCorrupt, LeaseLost
from streamup.models import Claim, Status

PATHS = "streams:paths"
LEASE_TOKEN = "streams:lease_token"

ScriptRunner = Callable[[str, list[str], list[str]], Awaitable[Any]]

_FINAL_LUA = "{" + ", ".join(f"['{s.value}'] = true" for s in Status if s.is_final) + "}"

# Shared by every write script. The fence: KEYS[1] is the stream's lease key, KEYS[2] its meta
# hash, ARGV[1] the lease value this store holds ('' for none: unfenced).
_PRELUDE = (
    f"local FINAL = {_FINAL_LUA}\n"
    + """
-- nil when the write may go ahead; else what the script returns: the holder's lease value, or
-- '' when the lease and the stream are both gone.
local function fenced_out(allow_gone)
  if ARGV[1] == '' then return nil end
  local holder = redis.call('GET', KEYS[1])
  if holder == ARGV[1] then return nil end
  if holder then return holder end
  -- Gone with the stream as well: the agent that took the lease over finished the stream (and
  -- deleted the lease). A write now would bring a finished stream back to life. A finish may go
  -- ahead: it only repeats one, and must, when the reply to our own finish was lost.
  if allow_gone or redis.call('EXISTS', KEYS[2]) == 1 then return nil end
  return ''
end

-- The meta key is built here (not passed in KEYS) for ids read from streams:paths, which the
-- caller cannot know in advance; fine on a single Redis, where scripts may touch any key.
local function unfinished(id)
  local status = redis.call('HGET', 'stream:' .. id .. ':meta', 'status')
  return status and not FINAL[status]
end

-- save_stream. KEYS[3]: streams:paths, KEYS[4..7]: the status sets. ARGV[2]: stream id,
-- ARGV[3]: its path, ARGV[4]: the index in KEYS of its status set ('0': none), ARGV[5]: '1'
-- when its status is final, ARGV[6..]: meta fields and values.
local function save(claimed)
  redis.call('DEL', KEYS[2])  -- a replace, not a merge: no field of an older record survives
  redis.call('HSET', KEYS[2], unpack(ARGV, 6))
  local target = tonumber(ARGV[4])
  for i = 4, 7 do
    if i == target then
      redis.call('SADD', KEYS[i], ARGV[2])
    else
      redis.call('SREM', KEYS[i], ARGV[2])
    end
  end
  local indexed = redis.call('HGET', KEYS[3], ARGV[3])
  if ARGV[5] == '1' then
    if indexed == ARGV[2] then redis.call('HDEL', KEYS[3], ARGV[3]) end
  elseif claimed or not indexed or not unfinished(indexed) then
    -- A plain save leaves another unfinished stream's entry alone: a stream whose file was
    -- replaced is saved again while it ends, and must not hide the new file's stream.
    redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
  end
end
"""
)

# KEYS: lease, meta, paths, active, pending, failed, completed. ARGV: see `save`.
SAVE_SCRIPT = (
    _PRELUDE
    + """
local lost = fenced_out(false)
if lost then return lost end
save(false)
return 1
"""
)

# Progress scripts refuse (return 0) when the meta hash is gone: a late write after finish must
# not recreate a torn stream. A Lua script rather than WATCH + MULTI/EXEC, because every part
# checkpoint writes the meta hash, so concurrent parts of one stream would keep aborting each
# other's transactions (20 concurrent parts: 160 aborted EXECs).
# KEYS: lease, meta, parts, checksums. ARGV: lease value, part number, part value, checksum
# value, uploaded_bytes, last_activity_at_utc.
RECORD_PART_SCRIPT = (
    _PRELUDE
    + """
local lost = fenced_out(false)
if lost then return lost end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], 'uploaded_bytes', ARGV[5], 'last_activity_at_utc', ARGV[6])
return 1
"""
)

# KEYS: lease, meta, parts, checksums. ARGV: lease value, uploaded_bytes, the part numbers.
REMOVE_PARTS_SCRIPT = (
    _PRELUDE
    + """
local lost = fenced_out(false)
if lost then return lost end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
end
redis.call('HSET', KEYS[2], 'uploaded_bytes', ARGV[2])
return 1
"""
)

# KEYS: lease, meta, parts, checksums, active, pending, failed, completed, completed_files,
# completed_log, paths, then the event outbox's (redis_outbox.py): outbox, queue, seq, events.
# ARGV: lease value, stream id, "1" if the stream completed, record path, record JSON, history
# limit, the stream's path, then the event: id ('' for none), record JSON, type, body.
FINISH_SCRIPT = (
    _PRELUDE
    + """
local lost = fenced_out(true)
if lost then return lost end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
for i = 5, 8 do redis.call('SREM', KEYS[i], ARGV[2]) end
if ARGV[3] == '1' then redis.call('SADD', KEYS[8], ARGV[2]) end
-- A newer stream of the same path (the file was replaced) keeps its entry.
if redis.call('HGET', KEYS[11], ARGV[7]) == ARGV[2] then redis.call('HDEL', KEYS[11], ARGV[7]) end
redis.call('HSET', KEYS[9], ARGV[4], ARGV[5])
local function entry_id(entry)
  local ok, old = pcall(cjson.decode, entry)
  if ok and type(old) == 'table' and type(old['stream_id']) == 'string' then
    return old['stream_id']
  end
  return nil
end
-- One entry per stream, so a retried finish does not show twice and trimming an id's entry
-- means no other entry still names it. At most history-limit small decodes per finish.
for _, entry in ipairs(redis.call('LRANGE', KEYS[10], 0, -1)) do
  if entry_id(entry) == ARGV[2] then redis.call('LREM', KEYS[10], 0, entry) end
end
redis.call('LPUSH', KEYS[10], ARGV[5])
local limit = tonumber(ARGV[6])
for _, entry in ipairs(redis.call('LRANGE', KEYS[10], limit, -1)) do
  local id = entry_id(entry)
  if id then redis.call('SREM', KEYS[8], id) end
end
redis.call('LTRIM', KEYS[10], 0, limit - 1)
-- HSETNX: a retried finish keeps the event first written, its place and its one stream entry.
if ARGV[8] ~= '' and redis.call('HSETNX', KEYS[12], ARGV[8], ARGV[9]) == 1 then
  redis.call('ZADD', KEYS[13], redis.call('INCR', KEYS[14]), ARGV[8])
  redis.call('XADD', KEYS[15], 'MAXLEN', '~', ARGV[6], '*',
    'id', ARGV[8], 'type', ARGV[10], 'stream_id', ARGV[2], 'event', ARGV[11])
end
return 1
"""
)

# KEYS: as SAVE_SCRIPT's, then completed_files, the lease token counter. ARGV: as SAVE_SCRIPT's,
# but ARGV[1] is '{ttl ms}|{owner}' of the agent that takes a new stream's lease with the claim
# ('' for none). Returns {claim, stream id[, lease token]}.
CLAIM_SCRIPT = (
    _PRELUDE
    + """
local function claimed_lease(id)
  if ARGV[1] == '' then return nil end
  local ttl, owner = string.match(ARGV[1], '^(%d+)|(.*)$')
  local lease = 'stream:' .. id .. ':lease'
  local holder = redis.call('GET', lease)
  if holder then
    local held_by, token = string.match(holder, '^(.*)|(%d+)$')
    if held_by ~= owner then return nil end
    redis.call('PEXPIRE', lease, ttl)
    return token
  end
  local token = redis.call('INCR', KEYS[9])
  redis.call('SET', lease, owner .. '|' .. token, 'PX', ttl)
  return tostring(token)
end
local function new(id)
  local token = claimed_lease(id)
  if token then return {'new', id, token} end
  return {'new', id}
end
local fields = {}
for i = 6, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
local indexed = redis.call('HGET', KEYS[3], ARGV[3])
if indexed then
  local meta = 'stream:' .. indexed .. ':meta'
  local found = redis.call('HMGET', meta, 'status', 'original_path', 'inode')
  if found[1] and not FINAL[found[1]] and found[2] == ARGV[3] and found[3] == fields['inode'] then
    -- A retried claim (its reply was lost) finds the stream it registered: still the finder's.
    if indexed == ARGV[2] then return new(indexed) end
    return {'existing', indexed}
  end
end
-- An integer of the canonical record JSON, as its decimal text. Not cjson: it reads numbers as
-- doubles, which cannot hold every inode or mtime_ns. '[{,]"name":' matches a key only: every
-- quote inside a JSON string is escaped.
local function json_int(text, name)
  return string.match(text, '[{,]"' .. name .. '":(%d+)')
end
local done = redis.call('HGET', KEYS[8], ARGV[3])
if done and json_int(done, 'inode') == fields['inode']
    and json_int(done, 'size_bytes') == fields['size_bytes']
    and json_int(done, 'mtime_ns') == fields['mtime_ns'] then
  local ok, record = pcall(cjson.decode, done)
  if ok and type(record) == 'table' and type(record['stream_id']) == 'string' then
    return {'completed', record['stream_id']}
  end
end
save(true)
return new(ARGV[2])
"""
)

# KEYS: lease, lease token counter. ARGV: owner, ttl in ms. Returns the token, or nil.
_ACQUIRE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local owner, token = string.match(holder, '^(.*)|(%d+)$')
  if owner ~= ARGV[1] then return nil end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(token)
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease, lease token counter. ARGV: owner, ttl in ms, the dead owner. Returns the token,
# or nil when a live agent holds the lease.
_TAKE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local owner = string.match(holder, '^(.*)|%d+$')
  if owner ~= ARGV[3] and owner ~= ARGV[1] then return nil end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# Every lease an agent holds, renewed in one round trip (stream.ownership: once per TTL/3).
# KEYS: lease and meta of each stream, in pairs. ARGV: ttl in ms, then our lease value of each
# stream, in the same order. Returns one 1 (still ours, extended) or 0 (lost) per stream.
_RENEW_SCRIPT = """
local replies = {}
for i = 2, #ARGV do
  local lease, meta = KEYS[2 * i - 3], KEYS[2 * i - 2]
  local holder = redis.call('GET', lease)
  local ours = 0
  if holder == ARGV[i] then
    redis.call('PEXPIRE', lease, ARGV[1])
    ours = 1
  elseif not holder and redis.call('EXISTS', meta) == 1 then
    -- Expired and nobody took it: still ours. Unless the stream is gone too (see fenced_out).
    redis.call('SET', lease, ARGV[i], 'PX', ARGV[1])
    ours = 1
  end
  replies[i - 1] = ours
end
return replies
"""
# Streams per renewal script: a thousand GET + PEXPIRE keep Redis busy for about a millisecond,
# so a larger fleet of leases cannot stall the server's other clients for long.
RENEW_BATCH = 1000

# KEYS: lease. ARGV: our lease value.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(stream_id: str) -> str:
    return f"stream:{stream_id}:lease"


def owner_of(value: str) -> str:
    """The owner part of a lease value: owners may contain '|', tokens never do."""
    return value.rpartition("|")[0]


def claim_lease_arg(owner: str | None, ttl_s: float) -> str:
    """CLAIM_SCRIPT's ARGV[1]: who takes the claimed stream's lease, for how long."""
    return "" if owner is None else f"{_ttl_ms(ttl_s)}|{owner}"


def claim_result(reply: Any) -> tuple[Claim, str, str | None]:
    """CLAIM_SCRIPT's `{claim, stream id[, lease token]}` reply."""
    try:
        claim, stream_id, *token = reply
        return Claim(claim), str(stream_id), str(token[0]) if token else None
    except (TypeError, ValueError) as exc:
        raise CheckpointCorrupt(f"claim_stream: unexpected reply from Redis: {reply!r}") from exc


def _ttl_ms(ttl_s: float) -> str:
    if not ttl_s > 0:
        raise ValueError(f"a lease ttl must be positive, not {ttl_s}")
    return str(max(1, round(ttl_s * 1000)))


class Leases:
    """The lease values one RedisStore holds, by stream id, and the scripts that manage them."""

    def __init__(self, run: ScriptRunner) -> None:
        self._run = run
        self._held: dict[str, str] = {}

    def held(self, stream_id: str) -> str:
        """What a write of the stream is fenced with: our lease value, '' for none (unfenced)."""
        return self._held.get(stream_id, "")

    def check(self, stream_id: str, reply: Any) -> Any:
        """A write script's reply; LeaseLost when the fence stopped it (the reply is a string)."""
        if not isinstance(reply, str):
            return reply
        ours = owner_of(self.held(stream_id))
        if reply:
            raise LeaseLost(
                f"stream {stream_id} is leased to {owner_of(reply)} now, not to {ours};"
                " nothing was written"
            )
        raise LeaseLost(
            f"stream {stream_id} was finished by another agent while {ours}'s lease had lapsed;"
            " nothing was written"
        )

    def hold(self, stream_id: str, value: str) -> None:
        """A lease taken by another script (a claim): our writes are fenced with it now."""
        self._held[stream_id] = value

    def forget(self, stream_id: str) -> None:
        self._held.pop(stream_id, None)

    async def acquire(self, stream_id: str, owner: str, ttl_s: float) -> int | None:
        keys = [lease_key(stream_id), LEASE_TOKEN]
        token = await self._run(_ACQUIRE_SCRIPT, keys, [owner, _ttl_ms(ttl_s)])
        if token is None:
            return None
        self._held[stream_id] = f"{owner}|{token}"
        return int(token)

    async def take(self, stream_id: str, owner: str, ttl_s: float, from_owner: str) -> int | None:
        keys = [lease_key(stream_id), LEASE_TOKEN]
        token = await self._run(_TAKE_SCRIPT, keys, [owner, _ttl_ms(ttl_s), from_owner])
        if token is None:
            return None
        self._held[stream_id] = f"{owner}|{token}"
        return int(token)

    async def renew(
        self, stream_ids: Sequence[str], meta_key: Callable[[str], str], ttl_s: float
    ) -> dict[str, bool]:
        """Whether each lease is still ours, extended by `ttl_s`: one script per RENEW_BATCH
        streams. A stream this store holds no lease on is not ours."""
        # A lost lease stays remembered: the writes that follow must keep meeting the fence.
        held = [sid for sid in dict.fromkeys(stream_ids) if sid in self._held]
        ours = dict.fromkeys(stream_ids, False)
        ttl_ms = _ttl_ms(ttl_s)
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            keys = [key for sid in batch for key in (lease_key(sid), meta_key(sid))]
            reply = await self._run(_RENEW_SCRIPT, keys, [ttl_ms, *(self._held[s] for s in batch)])
            if not isinstance(reply, list) or len(reply) != len(batch):
                raise CheckpointCorrupt(f"renewing leases: unexpected reply from Redis: {reply!r}")
            ours.update(zip(batch, (bool(r) for r in reply), strict=True))
        return ours

    async def release(self, stream_id: str) -> None:
        value = self._held.get(stream_id)
        if value is not None:
            await self._run(_RELEASE_SCRIPT, [lease_key(stream_id)], [value])
            self.forget(stream_id)
