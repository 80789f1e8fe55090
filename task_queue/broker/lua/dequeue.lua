-- dequeue.lua: promote due delayed tasks, recover expired leases, then lease up to N
-- ready tasks, best first. With N = 0 it only does the upkeep (the heartbeat's call).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 max tasks to lease, 6 lease length (ms), 7 worker id, 8 upkeep batch size.
-- Returns: {wait, leased, bad} where wait is the ms until the next due time or lease
-- deadline (-1 when none), leased a list of HGETALL replies of the leased tasks, and bad
-- the ids found in a queue set with no task hash behind them (dropped).

local max_tasks, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local worker, batch = ARGV[7], tonumber(ARGV[8])
local now = now_ms()
local bad = {}

local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(due) do
  redis.call('ZREM', K_DELAYED, id)
  local key = PREFIX .. id
  if is_task(key) then
    redis.call('ZADD', K_READY, redis.call('HGET', key, 'score'), id)
  else
    bad[#bad + 1] = id
  end
end

local expired = redis.call('ZRANGEBYSCORE', K_INFLIGHT, '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(expired) do
  local key = PREFIX .. id
  if not is_task(key) then
    redis.call('ZREM', K_INFLIGHT, id)
    bad[#bad + 1] = id
  else
    local h = redis.call('HMGET', key, 'cancel', 'attempts', 'max_attempts', 'worker', 'score')
    if h[1] == '1' then
      finish_cancelled(id, now)
    elseif tonumber(h[2]) >= tonumber(h[3]) then
      finish(id, 'failed', now, {'lost', h[4] or '', 'error', ''})
    else
      redis.call('ZREM', K_INFLIGHT, id)
      redis.call('HSET', key, 'status', 'pending', 'lost', h[4] or '')
      redis.call('HINCRBY', key, 'token', 1)  -- fence off the lost holder
      redis.call('HDEL', key, 'worker')
      redis.call('ZADD', K_READY, h[5], id)
    end
  end
end

local leased = {}
if max_tasks > 0 then
  local popped = redis.call('ZPOPMIN', K_READY, max_tasks)
  for i = 1, #popped, 2 do
    local id = popped[i]
    local key = PREFIX .. id
    if is_task(key) then
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HINCRBY', key, 'token', 1)
      redis.call('HSET', key, 'status', 'processing', 'worker', worker, 'started', now)
      redis.call('ZADD', K_INFLIGHT, now + lease_ms, id)
      leased[#leased + 1] = redis.call('HGETALL', key)
    else
      bad[#bad + 1] = id
    end
  end
end

if redis.call('ZCARD', K_READY) > 0 then
  wake()  -- work remains: pass the wake on to the next idle worker
end

local wait = -1
local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
if d[2] then
  wait = math.max(0, tonumber(d[2]) - now)
end
local f = redis.call('ZRANGE', K_INFLIGHT, 0, 0, 'WITHSCORES')
if f[2] then
  local until_deadline = math.max(0, tonumber(f[2]) - now)
  if wait < 0 or until_deadline < wait then
    wait = until_deadline
  end
end
return {wait, leased, bad}
