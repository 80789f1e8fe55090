-- dequeue.lua: promote due delayed tasks, recover expired leases, go on moving on the
-- children of ended tasks (a batch), then lease up to N ready tasks, best first. With
-- N = 0 it only does the upkeep (the heartbeat's call).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 max tasks to lease, 6 lease length (ms), 7 worker id, 8 upkeep batch size,
--      9 request id ('' = none): a caller that lost the reply runs the script again with
--      the same request id and gets the tasks of the first run back, still leased to it,
--      instead of a second batch (the list `<seq>:req:<id>` lives as long as the lease).
-- Returns: {wait, leased, bad, recovered}: wait is the ms until the next due time or
-- lease deadline (-1 when none); leased holds, per leased task, its LEASE_FIELDS values
-- (see lib.lua); bad the ids found in a queue set with no task hash behind them
-- (dropped); recovered, per expired lease, {id, outcome, holder} with outcome "ready",
-- "failed" (attempts used up) or "cancelled", or "invalid": the record's attempts,
-- max_attempts or score is not a number, so the task is failed with a DecodeError (a
-- delayed task whose score is not a number is reported so too, with holder '').

local max_tasks, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local worker, batch, request = ARGV[7], tonumber(ARGV[8]), ARGV[9] or ''
local now = now_ms()
local bad, recovered = {}, {}
local INVALID = '{"type":"DecodeError","message":"invalid task record: attempts, ' ..
  'max_attempts or score is not a number","traceback":null}'

-- A number read from a task hash, or nil when the field is missing or not a number.
local function number(value)
  local n = tonumber(value)
  if n ~= n then
    return nil  -- NaN
  end
  return n
end

local request_key = K_SEQ .. ':req:' .. request
if request ~= '' and max_tasks > 0 then
  local earlier = redis.call('LRANGE', request_key, 0, -1)
  if #earlier > 0 then
    local again = {}
    for i = 1, #earlier, 2 do
      local h = read(PREFIX .. earlier[i], unpack(LEASE_FIELDS))
      if h and h[3] == 'processing' and h[6] == earlier[i + 1] then
        h[1] = earlier[i]
        for j = 7, 12 do
          h[j] = h[j] or ''
        end
        again[#again + 1] = h
      end
    end
    return {0, again, {}, {}}
  end
end

local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(due) do
  redis.call('ZREM', K_DELAYED, id)
  local h = read(PREFIX .. id, 'score')
  if not h then
    bad[#bad + 1] = id
  elseif not number(h[1]) then
    finish(id, 'failed', now, {'error', INVALID}, K_DELAYED)
    recovered[#recovered + 1] = {id, 'invalid', ''}
  else
    redis.call('ZADD', K_READY, h[1], id)
  end
end

local expired = redis.call('ZRANGEBYSCORE', K_INFLIGHT, '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(expired) do
  local key = PREFIX .. id
  local h = read(key, 'status', 'cancel', 'attempts', 'max_attempts', 'worker', 'score')
  if not h then
    redis.call('ZREM', K_INFLIGHT, id)
    bad[#bad + 1] = id
  else
    local holder = h[5] or ''
    local outcome = 'ready'
    fence(key)
    if h[2] == '1' then
      outcome = 'cancelled'
      finish(id, 'cancelled', now, {}, K_INFLIGHT)
    elseif not (number(h[3]) and number(h[4]) and number(h[6])) then
      outcome = 'invalid'  -- a corrupted record must not stop the recovery of the rest
      finish(id, 'failed', now, {'lost', holder, 'error', INVALID}, K_INFLIGHT)
    elseif tonumber(h[3]) >= tonumber(h[4]) then
      outcome = 'failed'
      finish(id, 'failed', now, {'lost', holder, 'error', ''}, K_INFLIGHT)
    else
      redis.call('ZREM', K_INFLIGHT, id)
      redis.call('HSET', key, 'status', 'pending', 'lost', holder, 'worker', '')
      redis.call('ZADD', K_READY, h[6], id)
    end
    recovered[#recovered + 1] = {id, outcome, holder}
  end
end

continue_releases(now)  -- children of ended tasks left by earlier runs, a batch

local leased = {}
if max_tasks > 0 then
  local popped = redis.call('ZPOPMIN', K_READY, max_tasks)
  local deadlines = {}
  local deadline = now + lease_ms
  local token = 0
  if #popped > 0 then
    token = redis.call('INCRBY', K_SEQ, #popped / 2) - #popped / 2
  end
  for i = 1, #popped, 2 do
    local id = popped[i]
    local key = PREFIX .. id
    local h = read(key, unpack(LEASE_FIELDS))
    if h then
      h[1] = id
      token = token + 1
      h[3] = 'processing'
      h[4] = (tonumber(h[4]) or 0) + 1
      h[6] = token
      h[11] = now
      redis.call('HSET', key, 'status', 'processing', 'attempts', h[4], 'token', token,
        'worker', worker, 'started', now)
      deadlines[#deadlines + 1] = deadline
      deadlines[#deadlines + 1] = id
      if request ~= '' then
        redis.call('RPUSH', request_key, id, token)
      end
      -- false (a field the record lacks) would cut the reply list short: send ''
      for j = 7, 12 do
        h[j] = h[j] or ''
      end
      leased[#leased + 1] = h
    else
      bad[#bad + 1] = id
    end
  end
  zadd_all(K_INFLIGHT, deadlines)
  if request ~= '' and #deadlines > 0 then
    redis.call('PEXPIRE', request_key, lease_ms)
  end
end

flush(now)
if max_tasks == 0 then
  trim(now)  -- the heartbeat's upkeep also deletes final tasks past their retention
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
return {wait, leased, bad, recovered}
