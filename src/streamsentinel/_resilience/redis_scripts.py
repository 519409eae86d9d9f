"""The Lua scripts that are the only writers of fleet state in Redis (``redis_store.py``, ``fleet.py``).

Contract shared by every script:

- One script touches exactly one key (``KEYS[1]``): one hash slot, so each works on Redis Cluster and
  runs atomically (Redis runs a script to completion before any other command).
- Times come from the Redis server's clock (``TIME``, in milliseconds), never from a client: clients'
  clocks may disagree; every answer carries *remaining* milliseconds, which a client adds to its
  own monotonic clock. Redis >= 5 replicates a script's effects, so ``TIME`` is safe with replicas.
- A breaker hash carries a ``ver`` (version) incremented by every transition. A probe result names the
  version its lease came from and is ignored if the breaker moved on (a late result never undoes a
  newer state); a trip report names the version its window was built under.

Breaker hash (``{prefix}breaker:{name}``) fields: ``st`` (``closed``, ``open``, ``half_open``; absent:
closed), ``ver``, ``until`` (ms, server clock: end of the open wait), ``att`` (consecutive openings
since last closed), ``leased`` / ``res`` / ``fail`` / ``slow`` (this half-open round's probes handed
out, results back, failed, slow), ``lease_at`` (ms of the latest lease), ``v:<process>`` (a
process's vote that its local window tripped, valued with its expiry in ms).

Every breaker script returns ``{state, version, remaining_ms, extra}``.
"""

from __future__ import annotations

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'ver', 'until', 'att', 'leased', 'res', 'fail', 'slow', 'lease_at')
local st = h[1] or 'closed'
local ver = tonumber(h[2] or '0')
local till = tonumber(h[3] or '0')
local att = tonumber(h[4] or '0')
local leased = tonumber(h[5] or '0')
local res = tonumber(h[6] or '0')
local fail = tonumber(h[7] or '0')
local slow = tonumber(h[8] or '0')
local lease_at = tonumber(h[9] or '0')
local function remaining()
  if st == 'open' and till > now then return till - now end
  return 0
end
local function clear_votes()
  local all = redis.call('HKEYS', key)
  for i = 1, #all do
    if string.sub(all[i], 1, 2) == 'v:' then redis.call('HDEL', key, all[i]) end
  end
end
-- base_ms, mult, cap_ms: the breaker's open waits (BreakerConfig.open_wait)
local function open(base_ms, mult, cap_ms)
  att = att + 1
  local wait = base_ms * (mult ^ (att - 1))
  if wait > cap_ms then wait = cap_ms end
  st = 'open'
  ver = ver + 1
  till = now + math.floor(wait)
  leased = 0 res = 0 fail = 0 slow = 0
  clear_votes()
end
local function half_open()
  st = 'half_open'
  ver = ver + 1
  leased = 0 res = 0 fail = 0 slow = 0
  lease_at = now
end
local function close()
  st = 'closed'
  ver = ver + 1
  att = 0
  leased = 0 res = 0 fail = 0 slow = 0
  clear_votes()
end
local function save(ttl_ms)
  redis.call('HSET', key, 'st', st, 'ver', ver, 'until', till, 'att', att, 'leased', leased,
    'res', res, 'fail', fail, 'slow', slow, 'lease_at', lease_at)
  redis.call('PEXPIRE', key, ttl_ms)
end
"""

READ = (
    _PRELUDE
    + """
return {st, ver, remaining(), leased}
"""
)
"""Read a breaker without changing it (the background refresh)."""

LEASE = (
    _PRELUDE
    + """
-- ARGV: permitted probes, lease ttl ms (a round whose probes never came back is restarted), key ttl ms
local permitted = tonumber(ARGV[1])
local lease_ttl = tonumber(ARGV[2])
if st == 'closed' then return {1, st, ver, 0} end
if st == 'open' then
  if now < till then return {0, st, ver, till - now} end
  half_open()
end
if leased >= permitted and res < leased and now - lease_at > lease_ttl then
  half_open()  -- a prober died or hung: start a new round
end
if leased < permitted then
  leased = leased + 1
  lease_at = now
  save(tonumber(ARGV[3]))
  return {1, st, ver, 0}
end
save(tonumber(ARGV[3]))
return {0, st, ver, 0}
"""
)
"""Lease one HALF_OPEN probe; an OPEN breaker whose wait has elapsed moves to HALF_OPEN first (once,
fleet-wide). Returns ``{granted 0|1, state, version, remaining_ms}``; granted in ``closed`` means
"decide locally"."""

RESULT = (
    _PRELUDE
    + """
-- ARGV: version, outcome (success|failure|ignored), slow 0|1, permitted, failure threshold %,
-- slow threshold %, base_ms, mult, cap_ms, key ttl ms
if st ~= 'half_open' or ver ~= tonumber(ARGV[1]) then return {st, ver, remaining(), 0} end
local outcome = ARGV[2]
if outcome == 'ignored' then
  if leased > 0 then leased = leased - 1 end
else
  res = res + 1
  if outcome == 'failure' then fail = fail + 1 end
  if ARGV[3] == '1' then slow = slow + 1 end
  if res >= tonumber(ARGV[4]) then
    if fail * 100 >= tonumber(ARGV[5]) * res or slow * 100 >= tonumber(ARGV[6]) * res then
      open(tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
    else
      close()
    end
  end
end
save(tonumber(ARGV[10]))
return {st, ver, remaining(), res}
"""
)
"""Record one HALF_OPEN probe's result (version-fenced); the last permitted result decides."""

REPORT_OPEN = (
    _PRELUDE
    + """
-- ARGV: process id, version seen, minimum processes, vote ttl ms, base_ms, mult, cap_ms, key ttl ms
local seen = tonumber(ARGV[2])
if st ~= 'closed' or (seen >= 0 and ver > seen) then return {st, ver, remaining(), 0} end
redis.call('HSET', key, 'v:' .. ARGV[1], now + tonumber(ARGV[4]))
local votes = 0
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'v:' then
    if tonumber(all[i + 1]) > now then votes = votes + 1 else redis.call('HDEL', key, all[i]) end
  end
end
if votes >= tonumber(ARGV[3]) then
  open(tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
end
save(tonumber(ARGV[8]))
return {st, ver, remaining(), votes}
"""
)
"""A process's local window tripped: vote; OPEN once ``minimum processes`` distinct live votes exist
(only from ``closed`` and only if no transition happened since the version the voter saw; -1: it
saw none yet)."""

FORCE = (
    _PRELUDE
    + """
-- ARGV: state (closed|open|half_open), open wait ms, key ttl ms
local to = ARGV[1]
if to == 'open' then
  att = att + 1
  st = 'open' ver = ver + 1 till = now + tonumber(ARGV[2])
  leased = 0 res = 0 fail = 0 slow = 0
  clear_votes()
elseif to == 'half_open' then half_open()
else close() end
save(tonumber(ARGV[3]))
return {st, ver, remaining(), 0}
"""
)
"""A manual transition of the fleet breaker (operations and tests)."""

PAUSE = """
-- KEYS[1]: the pauses hash; ARGV: field, pause ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = now + tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if old < untilms then redis.call('HSET', KEYS[1], ARGV[1], untilms) else untilms = old end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < untilms - now then redis.call('PEXPIRE', KEYS[1], untilms - now + 1000) end
return untilms - now
"""
"""Set a fleet-wide "blocked until" (never shortens one already set). Returns the remaining ms."""

PAUSES_READ = """
-- KEYS[1]: the pauses hash. Returns {field, remaining ms, ...} of the pauses still running.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    out[#out + 1] = all[i]
    out[#out + 1] = left
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""
"""Read the running pauses (and drop the ended ones)."""

BUDGET = """
-- KEYS[1]: the retry budget hash; ARGV: requests to add, retries to add, window seconds.
-- Per-second buckets r:<s> and t:<s> (server clock); returns {requests, retries} in the window.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local window = tonumber(ARGV[3])
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], 'r:' .. sec, ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 't:' .. sec, ARGV[2]) end
local requests, retries = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local at = tonumber(string.sub(all[i], 3))
  if at <= sec - window then
    redis.call('HDEL', KEYS[1], all[i])
  elseif string.sub(all[i], 1, 2) == 'r:' then
    requests = requests + tonumber(all[i + 1])
  else
    retries = retries + tonumber(all[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], window * 2 + 1)
return {requests, retries}
"""
"""Add this process's requests and retries since its last flush; the fleet's totals in the window."""
