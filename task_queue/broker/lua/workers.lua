-- workers.lua: the registry of a queue's live worker processes. Runs on its own: lib.lua
-- is not put in front of it.
-- KEYS 1 workers       zset  worker id -> when its entry expires (ms): heartbeat + ttl
--      2 workers:info  hash  worker id -> "<heartbeat (ms)>:<worker JSON>"
-- ARGV 1 mode: "register", "unregister" or "list"
--      register:   2 worker id, 3 worker JSON, 4 ttl (ms)
--      unregister: 2 worker id
-- Returns: register: 1 new entry, 0 refreshed; unregister: 1 removed, 0 not registered;
--          list: {now (ms), id, value, id, value, ...} for each live entry.
-- Every run first deletes up to 100 expired entries (processes that stopped refreshing),
-- so they never pile up; both keys also expire once no worker refreshes any more.

local K_WORKERS, K_INFO = KEYS[1], KEYS[2]
local mode = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local dead = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now, 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', K_WORKERS, unpack(dead))
  redis.call('HDEL', K_INFO, unpack(dead))
end

if mode == 'register' then
  local id, info, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local new = redis.call('ZADD', K_WORKERS, now + ttl, id)
  redis.call('HSET', K_INFO, id, now .. ':' .. info)
  -- The keys outlive every entry: their expiry is pushed to at least this one's.
  for _, key in ipairs({K_WORKERS, K_INFO}) do
    if redis.call('PTTL', key) < ttl then
      redis.call('PEXPIRE', key, ttl)
    end
  end
  return new
end

if mode == 'unregister' then
  local id = ARGV[2]
  redis.call('HDEL', K_INFO, id)
  return redis.call('ZREM', K_WORKERS, id)
end

local out = {now}
local ids = redis.call('ZRANGEBYSCORE', K_WORKERS, '(' .. now, '+inf')
for i = 1, #ids, 500 do
  local slice = {unpack(ids, i, math.min(i + 499, #ids))}
  local values = redis.call('HMGET', K_INFO, unpack(slice))
  for j, id in ipairs(slice) do
    if values[j] then
      out[#out + 1] = id
      out[#out + 1] = values[j]
    end
  end
end
return out
