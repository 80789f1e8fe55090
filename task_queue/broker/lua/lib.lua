-- lib.lua: helpers shared by every script; broker/redis.py puts this text in front of
-- each script before loading it, so a script is this prelude plus its own body.
--
-- KEYS (the same for every script, all under one hash tag):
--   1 ready      zset  id -> priority * 2^32 + sequence
--   2 delayed    zset  id -> due time (ms)
--   3 inflight   zset  id -> lease deadline (ms)
--   4 failed     zset  id -> time it failed (ms): the dead letters
--   5 completed  zset  id -> time it completed (ms)
--   6 cancelled  zset  id -> time it was cancelled (ms)
--   7 seq        string, INCR gives the FIFO sequence
--   8 wake       zset with the single member "w"; idle workers BZPOPMIN it
-- ARGV (the same first four for every script; a script's own arguments start at 5):
--   1 prefix of task hashes, e.g. "{tq:default}:task:"
--   2 pub/sub channel told the id of every task that becomes final
--   3 milliseconds completed and cancelled tasks are kept
--   4 milliseconds failed tasks are kept
-- Task hash fields: id, data (static JSON), status, attempts, max_attempts, token, score,
-- due, worker, started, finished, result, error, progress, cancel, reason, lost.

local K_READY, K_DELAYED, K_INFLIGHT = KEYS[1], KEYS[2], KEYS[3]
local K_FAILED, K_COMPLETED, K_CANCELLED = KEYS[4], KEYS[5], KEYS[6]
local K_SEQ, K_WAKE = KEYS[7], KEYS[8]
local PREFIX, CHANNEL = ARGV[1], ARGV[2]
local RESULT_TTL, DEAD_TTL = tonumber(ARGV[3]), tonumber(ARGV[4])
local TRIM_BATCH = 100

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- True when `key` holds a task hash (a missing or foreign-typed key is not a task).
local function is_task(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end

local function wake()
  redis.call('ZADD', K_WAKE, 0, 'w')
end

-- Drop set members older than the retention; their hashes expire by their own TTL.
local function trim(set, ttl, now)
  local old = redis.call('ZRANGEBYSCORE', set, '-inf', now - ttl, 'LIMIT', 0, TRIM_BATCH)
  if #old > 0 then
    redis.call('ZREM', set, unpack(old))
  end
end

-- Make the task final: out of every queue set, into the set of its final state, with a TTL.
-- `extra` is a flat list of more hash fields to set.
local function finish(id, status, now, extra)
  local key = PREFIX .. id
  redis.call('ZREM', K_INFLIGHT, id)
  redis.call('ZREM', K_READY, id)
  redis.call('ZREM', K_DELAYED, id)
  redis.call('HSET', key, 'status', status, 'finished', now, unpack(extra))
  redis.call('HDEL', key, 'worker')
  local set, ttl = K_COMPLETED, RESULT_TTL
  if status == 'failed' then
    set, ttl = K_FAILED, DEAD_TTL
  elseif status == 'cancelled' then
    set = K_CANCELLED
  end
  redis.call('ZADD', set, now, id)
  redis.call('PEXPIRE', key, math.max(1, ttl))
  trim(set, ttl, now)
  redis.call('PUBLISH', CHANNEL, id)
end

-- Put a pending task where it belongs: ready now, or delayed until `due`.
local function schedule(id, score, due, now)
  if due <= now then
    redis.call('ZADD', K_READY, score, id)
    wake()
  else
    redis.call('ZADD', K_DELAYED, due, id)
    local first = redis.call('ZRANGE', K_DELAYED, 0, 0)
    if first[1] == id then
      wake()  -- the earliest due time moved: idle workers must recompute their wait
    end
  end
end

-- Check that the caller may report `done` on the task. Returns the status and nil when it
-- may go on, or nil and the reply to return at once:
--   1 already `done` by this holder (a repeated report), 0 refused (stale holder),
--   -1 no such task, -2 final already (an administrative call without a token).
local function check_holder(key, token, done)
  if not is_task(key) then
    return nil, -1
  end
  local h = redis.call('HMGET', key, 'status', 'token')
  local status, current = h[1], h[2]
  if token ~= '' then
    if current ~= token then
      return nil, 0
    end
    if status == done then
      return nil, 1
    end
    if status ~= 'processing' then
      return nil, 0
    end
    return status, nil
  end
  if status == done then
    return nil, 1
  end
  if status == 'completed' or status == 'failed' or status == 'cancelled' then
    return nil, -2
  end
  return status, nil
end

local function finish_cancelled(id, now)
  finish(id, 'cancelled', now, {'error', ''})
end
