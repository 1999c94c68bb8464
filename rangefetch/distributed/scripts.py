"""The Lua scripts behind rangefetch's atomic multi-key Redis updates.

Redis runs a script without interleaving other commands, so each one is a
check-and-set that cannot race another worker.  ``Store`` (``store.py``)
and the job queue (``queue.py``) register them; each script states what its
KEYS and ARGV hold.  Range members are ``"start-end"`` (``str(Range)``).
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "ACQUIRE_FAIR",
    "CREATE",
    "ENQUEUE",
    "GCRA",
    "MARK_DONE",
    "MARK_DONE_MANY",
    "OWNED_HDEL_MANY",
    "OWNED_DELETE",
    "OWNED_HDEL",
    "OWNED_SET",
    "REMOVE",
    "RENEW",
    "SET_PROGRESS",
    "SET_STATE",
]

# -- downloads and ranges -------------------------------------------------------

# Record a new download, all of it or nothing: a producer that dies half-way
# must not leave an id without its fields (neither loadable nor creatable again).
# KEYS[1] the download hash, KEYS[2] its headers hash, KEYS[3] its CA key, KEYS[4] the downloads zset.
# ARGV[1] the id, ARGV[2] now (unix seconds), ARGV[3] n, ARGV[4 .. 3+n] field, value pairs,
# ARGV[4+n] m, ARGV[5+n .. 4+n+m] header name, value pairs, then '1' and the CA certificates, or '0'.
# Returns 1 if recorded, 0 if the id is known already (and nothing was touched).
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])  -- first: the one write that can fail (a key of another type)
redis.call('DEL', KEYS[2], KEYS[3])  -- what a download of this id left behind
redis.call('HSET', KEYS[1], 'id', ARGV[1])
local n = tonumber(ARGV[3])
for i = 4, 3 + n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local at = 4 + n
local m = tonumber(ARGV[at])
for i = at + 1, at + m, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
at = at + m + 1
if ARGV[at] == '1' then redis.call('SET', KEYS[3], ARGV[at + 1]) end
return 1
"""

# Move a download to a new state if its current state allows it, set the
# fields that go with it, and tell the state channel: all at once, so whoever
# reads the new state also reads its fields (a "complete" with its sha256).
# KEYS[1] the download hash.
# ARGV[1] new state, ARGV[2] now (unix seconds), ARGV[3] the state channel (a channel, not a key),
# ARGV[4] "1" to set 'started' to now when the state changes, ARGV[5] n, ARGV[6 .. 5+n] field, value pairs,
# ARGV[6+n ..] the states that may become ARGV[1].
# Returns {1, previous} on success, {0, current} if the transition is illegal, {-1, ''} if unknown.
SET_STATE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
local n = tonumber(ARGV[5])
for i = 6 + n, #ARGV do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', ARGV[2])
    if ARGV[4] == '1' and current ~= ARGV[1] then
      redis.call('HSET', KEYS[1], 'started', ARGV[2])
    end
    for j = 6, 5 + n, 2 do
      redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
    end
    redis.call('PUBLISH', ARGV[3], ARGV[1])
    return {1, current}
  end
end
return {0, current}
"""

# Record a range as finished: done, full progress, digest; no longer in flight or failed.
# KEYS[1] done set, KEYS[2] progress hash, KEYS[3] digest hash, KEYS[4] inflight hash, KEYS[5] failed hash.
# ARGV[1] range member, ARGV[2] its length, ARGV[3] its digest, ARGV[4] the channel to tell (a channel, not a key).
# Returns how many ranges are done.
MARK_DONE = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return redis.call('SCARD', KEYS[1])
"""

# Record several ranges as finished at once (a multi-range job's batch):
# MARK_DONE for each, one command per key whatever the batch's size, then the
# download's state, so the job learns in the same round trip whether to go on.
# KEYS[1] done set, KEYS[2] progress hash, KEYS[3] digest hash, KEYS[4] inflight hash, KEYS[5] failed hash,
# KEYS[6] the download hash.
# ARGV[1] the channel to tell, then (range member, length, digest) per range.
# Returns {ranges done, the download's state or ''}.
MARK_DONE_MANY = """
local members, lengths, digests = {}, {}, {}
for i = 2, #ARGV, 3 do
  members[#members + 1] = ARGV[i]
  lengths[#lengths + 1] = ARGV[i]
  lengths[#lengths + 1] = ARGV[i + 1]
  digests[#digests + 1] = ARGV[i]
  digests[#digests + 1] = ARGV[i + 2]
end
redis.call('SADD', KEYS[1], unpack(members))
redis.call('HSET', KEYS[2], unpack(lengths))
redis.call('HSET', KEYS[3], unpack(digests))
redis.call('HDEL', KEYS[4], unpack(members))
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('HDEL', KEYS[5], unpack(members)) end
redis.call('PUBLISH', ARGV[1], members[#members])
return {redis.call('SCARD', KEYS[1]), redis.call('HGET', KEYS[6], 'state') or ''}
"""

# Record a range's fsynced bytes unless the range is done already or more
# of it is recorded: progress never goes backwards.  A run whose lease
# lapsed (a zombie: it records nothing once it knows, but may not know yet)
# must not turn a finished range's full length, or the further progress of
# the run that took the range over, back into the few bytes it had written.
# Only a redo or a fresh start (``Store.redo``, ``Store.forget_ranges``)
# lowers it, by deleting it.
# KEYS[1] done set, KEYS[2] progress hash.
# ARGV[1] range member, ARGV[2] bytes fsynced (an absolute count).
# Returns 1 if recorded, 0 if the range was done or had as much recorded.
SET_PROGRESS = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# Note that a range is no longer being fetched, unless another run has taken it since.
# KEYS[1] the inflight hash.  ARGV[1] range member, ARGV[2] the worker that fetched it.
# Returns 1 if removed, 0 if someone else holds it (or nobody).
OWNED_HDEL = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# OWNED_HDEL for several ranges: those still noted as fetched by ARGV[1].
# KEYS[1] the inflight hash.  ARGV[1] the worker, ARGV[2..] range members.
# Returns how many were removed.
OWNED_HDEL_MANY = """
local members = {}
for i = 2, #ARGV do members[#members + 1] = ARGV[i] end
local owners = redis.call('HMGET', KEYS[1], unpack(members))
local mine = {}
for i, o in ipairs(owners) do
  if o == ARGV[1] then mine[#mine + 1] = members[i] end
end
if #mine == 0 then return 0 end
return redis.call('HDEL', KEYS[1], unpack(mine))
"""

# -- connection slots -------------------------------------------------------------
#
# Counting semaphores as sorted sets of lease tokens scored by expiry, so a
# lease held by a worker that died frees itself.  All keys are acquired or none.

# KEYS: the semaphores.  ARGV[1] token, ARGV[2] ttl (seconds), ARGV[2 + i] the limit of KEYS[i].
# Returns 1 if a slot was taken in every semaphore, else 0 (and none was taken).
ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local token, ttl = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
  if not redis.call('ZSCORE', key, token) and redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, t + ttl, token)
  redis.call('EXPIRE', key, math.ceil(ttl) + 60)
end
return 1
"""

# Set a lease held by ARGV[1] to ARGV[2] for ARGV[3] milliseconds (ARGV[2] = ARGV[1] renews it);
# 0 if someone else holds it (or nobody).
# KEYS[1] the lease.
OWNED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Give up a lease held by ARGV[1]; 0 if someone else holds it (or nobody).
# KEYS[1] the lease.
OWNED_DELETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# Extend a token's leases, if it still holds every one of them.  A lease
# that lapsed is lost even while its member lingers (it is removed only by
# the next ACQUIRE on that key): renewing it would revive a slot that may
# have been handed to someone else meanwhile.
# KEYS: the semaphores.  ARGV[1] token, ARGV[2] ttl (seconds).
# Returns 1 if every lease was extended, 0 if one had lapsed or gone (and none was extended).
RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
for _, key in ipairs(KEYS) do
  local expiry = redis.call('ZSCORE', key, ARGV[1])
  if not expiry or tonumber(expiry) <= t then return 0 end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', t + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[2])) + 60)
end
return 1
"""

# Like ACQUIRE, but the first semaphore (a server host) is shared fairly
# among the downloads using it.  Tokens are "OWNER:..." (a range job run's is
# "DOWNLOAD:START-END#RUN").  A download that finds the host full while holding
# less than its fair share (the limit divided by the downloads holding or
# waiting) records itself in the waiters zset; while someone else waits, a
# download at or above its share gets no new slot.  So one huge download
# gives slots up to a small one as its ranges finish or yield, instead of
# taking every freed slot back at once.
# KEYS[1] the shared semaphore, KEYS[2] its waiters (zset: owner -> last wait), KEYS[3..] other semaphores.
# ARGV[1] token, ARGV[2] ttl, ARGV[3] owner, ARGV[4] wait_ttl, ARGV[5] the shared limit,
# ARGV[3 + i] the limit of KEYS[i] for i >= 3.
# Returns 1 if a slot was taken in every semaphore, else 0.
ACQUIRE_FAIR = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local token, ttl, owner, wait_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local shared, waiters = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', shared, '-inf', t)
redis.call('ZREMRANGEBYSCORE', waiters, '-inf', t - wait_ttl)
local listed = true  -- whether the owner may be among the waiters (known only when they are read)
if not redis.call('ZSCORE', shared, token) then
  listed = false
  local limit = tonumber(ARGV[5])
  local holders = redis.call('ZRANGE', shared, 0, -1)
  local owners, count, mine, others_wait = {}, 0, 0, false
  owners[owner] = true
  count = 1
  for _, m in ipairs(holders) do
    local o = string.match(m, '^(.*):')
    if o == owner then
      mine = mine + 1
    elseif o and not owners[o] then
      owners[o] = true
      count = count + 1
    end
  end
  for _, w in ipairs(redis.call('ZRANGE', waiters, 0, -1)) do
    if w == owner then
      listed = true
    else
      others_wait = true
      if not owners[w] then
        owners[w] = true
        count = count + 1
      end
    end
  end
  local fair = math.ceil(limit / count)
  if others_wait and mine >= fair then return 0 end
  if #holders >= limit then
    if mine < fair then
      redis.call('ZADD', waiters, t, owner)
      redis.call('EXPIRE', waiters, math.ceil(wait_ttl) + 60)
    end
    return 0
  end
end
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', t)
  if not redis.call('ZSCORE', KEYS[i], token) and redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  if i ~= 2 then
    redis.call('ZADD', key, t + ttl, token)
    redis.call('EXPIRE', key, math.ceil(ttl) + 60)
  end
end
if listed then redis.call('ZREM', waiters, owner) end
return 1
"""

# -- rate limits (ratelimit.py) ------------------------------------------------------
#
# GCRA, as ratelimit.Gcra does in one process: each key holds a limit's
# theoretical arrival time (TAT, unix seconds by Redis's clock, so workers on
# hosts whose clocks differ agree).  Taking n bytes moves the TAT on by
# n / rate from max(TAT, now); the taker waits until TAT - tolerance.  Every
# key is charged in the same call (a download's own limit and its host's cap),
# and the wait is the longest any of them asks.  Nothing is ever refused: the
# bytes are the taker's, and it waits before it reads more.  A key expires a
# second after its TAT has passed, when it holds nothing a later take needs.

# KEYS: the limits.  ARGV[1] bytes taken, ARGV[2] tolerance (seconds), ARGV[2 + i] the rate of KEYS[i] (bytes/s).
# Returns the seconds to wait, as a string (Lua numbers become integers in a reply), "0.000000" for none.
GCRA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local n, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), t) + n / tonumber(ARGV[2 + i])
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - t) * 1000) + 1000)
  wait = math.max(wait, tat - tolerance - t)
end
return string.format('%.6f', wait)
"""

# -- the arq queue (queue.py) -------------------------------------------------------

# Write arq jobs as ``enqueue_job`` would, skipping those queued or running
# already and ranges that are done.
# KEYS[1] the queue, KEYS[2] the download's done set.
# ARGV[1] job key prefix, ARGV[2] result prefix, ARGV[3] retry prefix, ARGV[4] now (ms), ARGV[5] TTL (ms),
# then (id, done member or '', score, payload) per job.
# Returns how many jobs were added.
ENQUEUE = """
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local added = 0
for i = 6, #ARGV, 4 do
  local id, member, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job_key = ARGV[1] .. id
  if (member == '' or redis.call('SISMEMBER', KEYS[2], member) == 0) and redis.call('EXISTS', job_key) == 0 then
    redis.call('DEL', ARGV[2] .. id, ARGV[3] .. id)
    local px = math.max(tonumber(score) - now, 0) + ttl
    redis.call('SET', job_key, ARGV[i + 3], 'PX', string.format('%d', px))
    redis.call('ZADD', KEYS[1], score, id)
    added = added + 1
  end
end
return added
"""

# Take queued jobs off the queue unless a worker is running them.
# KEYS[1] the queue.  ARGV[1] job key prefix, ARGV[2] in-progress prefix, ARGV[3] retry prefix, ARGV[4..] job ids.
# Returns how many jobs were removed.
REMOVE = """
local removed = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[2] .. id) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', ARGV[1] .. id, ARGV[3] .. id)
  end
end
return removed
"""
