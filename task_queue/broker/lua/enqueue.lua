-- enqueue.lua: store new tasks as pending, ready now or delayed; idempotent on id.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5: count n, then n groups of 5: id, data (static JSON), priority, delay (ms),
--         max_attempts.
-- Returns: one integer per task, 1 when stored, 0 when a task with that id existed.

local now = now_ms()
local n = tonumber(ARGV[5])
local last = redis.call('INCRBY', K_SEQ, n)
local out, ready, delayed = {}, {}, {}
for i = 0, n - 1 do
  local base = 6 + i * 5
  local id = ARGV[base]
  local key = PREFIX .. id
  local exists = redis.call('EXISTS', key) == 1
  if exists and expired(key, now) then
    forget(id)  -- gone for every reader already: the id is free again
    exists = false
  end
  if exists then
    out[#out + 1] = 0
  else
    local seq = (last - n + 1 + i) % 4294967296
    local score = tonumber(ARGV[base + 2]) * 4294967296 + seq
    local due = now + math.max(0, tonumber(ARGV[base + 3]))
    -- attempts, token and progress start absent and read as 0
    redis.call('HSET', key, 'id', id, 'data', ARGV[base + 1], 'status', 'pending',
      'max_attempts', ARGV[base + 4], 'score', score, 'due', due)
    if due <= now then
      ready[#ready + 1] = score
      ready[#ready + 1] = id
    else
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = id
    end
    out[#out + 1] = 1
  end
end
if #ready > 0 then
  zadd_all(K_READY, ready)
  wake()
end
if #delayed > 0 then
  local before = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  zadd_all(K_DELAYED, delayed)
  local after = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if before[2] ~= after[2] then
    wake()  -- the earliest due time moved: idle workers must recompute their wait
  end
end
return out
