-- enqueue.lua: store new tasks as pending: ready now, delayed, or waiting for parents;
-- idempotent on id.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5: count n, then n groups: id, data (static JSON), priority, delay (ms),
--         max_attempts, number of parents k, then the k parent ids.
-- Returns: one integer per task, 1 when stored, 2 when stored but cancelled at once (a
--          parent had failed or was cancelled), 0 when a task with that id existed; or
--          {-3, task id, parent id} when a new task names a parent that does not exist
--          (nothing is stored then).

local now = now_ms()
local n = tonumber(ARGV[5])

-- First pass: every parent of a new task exists, or is a new task earlier in this call.
local fresh, known = {}, {}
local at = 6
for _ = 1, n do
  local id, k = ARGV[at], tonumber(ARGV[at + 5])
  local key = PREFIX .. id
  if not (redis.call('EXISTS', key) == 1 and not expired(key, now)) then
    for j = 1, k do
      local parent = ARGV[at + 5 + j]
      if not fresh[parent] and not known[parent] then
        local pkey = PREFIX .. parent
        if not read(pkey, 'status') or expired(pkey, now) then
          return {-3, id, parent}
        end
        known[parent] = true
      end
    end
    fresh[id] = true
  end
  at = at + 6 + k
end

local last = redis.call('INCRBY', K_SEQ, n)
local out, ready, delayed = {}, {}, {}
at = 6
for i = 0, n - 1 do
  local id, k = ARGV[at], tonumber(ARGV[at + 5])
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
    local score = tonumber(ARGV[at + 2]) * 4294967296 + seq
    local due = now + math.max(0, tonumber(ARGV[at + 3]))
    -- attempts, token and progress start absent and read as 0
    redis.call('HSET', key, 'id', id, 'data', ARGV[at + 1], 'status', 'pending',
      'max_attempts', ARGV[at + 4], 'score', score, 'due', due)
    local open, doomed, names = {}, nil, {}
    for j = 1, k do
      local parent = ARGV[at + 5 + j]
      names[j] = #parent .. ':' .. parent
      local status = read(PREFIX .. parent, 'status')[1]
      if status == 'failed' or status == 'cancelled' then
        local ended = status == 'failed' and 'failed' or 'was cancelled'
        doomed = doomed or ('parent task ' .. parent .. ' ' .. ended)
      elseif status ~= 'completed' then
        open[#open + 1] = parent
      end
    end
    if k > 0 then
      redis.call('HSET', key, 'parents', table.concat(names))
    end
    local flag = 1
    if doomed then
      fence(key)
      finish(id, 'cancelled', now, {'reason', doomed}, K_WAITING)
      flag = 2
    elseif #open > 0 then
      wait_for_parents(id, open, now)
    elseif due <= now then
      ready[#ready + 1] = score
      ready[#ready + 1] = id
    else
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = id
    end
    out[#out + 1] = flag
  end
  at = at + 6 + k
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
flush(now)
return out
