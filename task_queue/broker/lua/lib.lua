-- lib.lua: helpers shared by every script. broker/redis.py loads them once as a Redis
-- Functions library (Redis 7+), with each script's body as one function of it; on an
-- older server it puts this text in front of each body and runs it with EVALSHA.
--
-- KEYS (the same for every script, all under one hash tag):
--   1 ready      zset  id -> priority * 2^32 + sequence
--   2 delayed    zset  id -> due time (ms)
--   3 inflight   zset  id -> lease deadline (ms)
--   4 failed     zset  id -> time it failed (ms): the dead letters
--   5 completed  zset  id -> time it completed (ms)
--   6 cancelled  zset  id -> time it was cancelled (ms)
--   7 seq        string, a counter: FIFO sequence numbers and fencing tokens are drawn
--                from it, so a token is never reused, not even after a purge
--   8 wake       zset with the single member "w"; idle workers BZPOPMIN it
--   9 waiting    zset  id -> time enqueued (ms): pending tasks whose parents have not
--                all completed yet; `<waiting>:<parent id>` is a set of the ids waiting
--                on that parent, deleted when the parent becomes final
-- ARGV (the same first four for every script; a script's own arguments start at 5):
--   1 prefix of task hashes, e.g. "{tq:default}:task:"
--   2 pub/sub channel told the ids of tasks that became final, each as "<length>:<id>"
--   3 milliseconds completed and cancelled tasks are kept
--   4 milliseconds failed tasks are kept
-- Keys written by name, next to `seq` (same hash tag):
--   <tag>:stats:<minute>  hash completed/failed/cancelled -> how many tasks became final
--                         in that minute (minutes since the epoch, Redis clock); expires
--                         after STATS_TTL
--   <tag>:releasing       list of "<status>:<id>": ended tasks whose waiting children
--                         are not all moved on yet (see `drain`)
-- Task hash fields: data (static JSON, which holds the id), status, attempts,
-- max_attempts, token, score, due (absent: due when created), worker, started,
-- finished, result, error, progress, cancel, reason, lost, deps
-- (parents not completed yet), parents (the parent ids, each as "<length>:<id>"),
-- context (JSON), logs (JSON records, one per line), nlogs (how many lines logs holds).
-- A task's state is the set holding its id; `status` in its hash always agrees with it.

-- Set by `bind` at the start of every call: a script runs `bind(KEYS, ARGV)` before its
-- body, and so does each function of the library (see redis.py), whose upvalues
-- outlive a call.
local K_READY, K_DELAYED, K_INFLIGHT, K_FAILED, K_COMPLETED, K_CANCELLED
local K_SEQ, K_WAKE, K_WAITING, PREFIX, CHANNEL, RESULT_TTL, DEAD_TTL, STATS_PREFIX
local K_RELEASING  -- "<tag>:releasing", named next to seq like the stats keys
local TRIM_BATCH = 500
-- Children moved on (released or cancelled) per run, all parents together; the rest
-- are left to the next runs (see `drain`).
local RELEASE_BATCH = 1000
local release_budget = RELEASE_BATCH
local STATS_TTL = (24 * 60 + 1) * 60000  -- monitoring.STATS_RETENTION_MINUTES, plus one

-- The fields a worker needs of a task it leases, in the order redis.py decodes them.
-- The first is read only because `read` needs a field every task has; the script puts
-- the task's id in its place.
local LEASE_FIELDS = {'status', 'data', 'status', 'attempts', 'max_attempts', 'token', 'due',
  'error', 'progress', 'cancel', 'started', 'context'}

local finished_ids = {}   -- ids made final by this run, published once at the end
local leaving = {}        -- set -> ids to remove from it, in one ZREM at the end
local arriving = {}       -- final-state set -> {time, id, ...} to add in one ZADD at the end
local counted = {}        -- final state -> how many tasks this run made final

local function bind(keys, argv)
  K_READY, K_DELAYED, K_INFLIGHT = keys[1], keys[2], keys[3]
  K_FAILED, K_COMPLETED, K_CANCELLED = keys[4], keys[5], keys[6]
  K_SEQ, K_WAKE, K_WAITING = keys[7], keys[8], keys[9]
  PREFIX, CHANNEL = argv[1], argv[2]
  RESULT_TTL, DEAD_TTL = tonumber(argv[3]), tonumber(argv[4])
  STATS_PREFIX = string.sub(K_SEQ, 1, -4) .. 'stats:'  -- "<tag>:seq" -> "<tag>:stats:"
  K_RELEASING = string.sub(K_SEQ, 1, -4) .. 'releasing'
  release_budget = RELEASE_BATCH
  finished_ids, leaving, arriving, counted = {}, {}, {}, {}
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- HMGET on a task hash; nil when the key is missing or holds another type. The first
-- field asked for must be one every task has (id, status, score...).
local function read(key, ...)
  local r = redis.pcall('HMGET', key, ...)
  if r['err'] or not r[1] then
    return nil
  end
  return r
end

-- ZADD `items` ({score, member, ...}) to `set` in slices: unpack has a limit.
local function zadd_all(set, items)
  for i = 1, #items, 1000 do
    redis.call('ZADD', set, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Give the task a new fencing token: every report of its last holder is refused now.
local function fence(key)
  redis.call('HSET', key, 'token', redis.call('INCR', K_SEQ))
end

local function wake()
  redis.call('ZADD', K_WAKE, 0, 'w')
end

local function later(list, set, value)
  local items = list[set]
  if not items then
    items = {}
    list[set] = items
  end
  items[#items + 1] = value
end

local release_children  -- defined below `schedule`, which it needs
local releases_pending  -- defined with it

-- The parent ids stored in a task hash's `parents` field.
local function parent_ids(key)
  local text = redis.call('HGET', key, 'parents')
  local ids, at = {}, 1
  if not text then
    return ids
  end
  while at <= #text do
    local colon = string.find(text, ':', at, true)
    local length = tonumber(string.sub(text, at, colon - 1))
    ids[#ids + 1] = string.sub(text, colon + 1, colon + length)
    at = colon + 1 + length
  end
  return ids
end

-- A task that waits on parents stops waiting: out of every parent's set of waiting
-- tasks, so a parent that ends later never acts on it (or on a new task with its id).
local function leave_waiting(id)
  local key = PREFIX .. id
  local h = read(key, 'status', 'deps')
  if h and (tonumber(h[2]) or 0) > 0 then
    for _, parent in ipairs(parent_ids(key)) do
      redis.call('SREM', K_WAITING .. ':' .. parent, id)
    end
    redis.call('HSET', key, 'deps', 0)
    redis.call('ZREM', K_WAITING, id)
  end
end

-- `finish` without what it does to the tasks waiting on this one (see `finish`).
local function finish_one(id, status, now, extra, from)
  if from then
    later(leaving, from, id)
  else
    later(leaving, K_READY, id)
    later(leaving, K_DELAYED, id)
    later(leaving, K_WAITING, id)
  end
  redis.call('HSET', PREFIX .. id, 'status', status, 'finished', now, unpack(extra))
  local set = K_COMPLETED
  if status == 'failed' then
    set = K_FAILED
  elseif status == 'cancelled' then
    set = K_CANCELLED
  end
  later(arriving, set, now)
  later(arriving, set, id)
  counted[status] = (counted[status] or 0) + 1
  finished_ids[#finished_ids + 1] = #id .. ':' .. id
end

-- Make the task final: out of the set that holds it (`from`: K_INFLIGHT, K_WAITING, or
-- nil for a pending task), into the set of its final state, and release or cancel the
-- tasks waiting on it. `extra` is a flat list of more hash fields to set. The set
-- changes are made together by `flush`; the hash is deleted when its time in the
-- final-state set is up (see `trim`).
local function finish(id, status, now, extra, from)
  if from ~= K_INFLIGHT then
    leave_waiting(id)
  end
  finish_one(id, status, now, extra, from)
  release_children(id, status, now)
end

-- Delete final tasks whose retention is over, a bounded batch per set per run.
local function trim(now)
  for set, ttl in pairs({[K_COMPLETED] = RESULT_TTL, [K_CANCELLED] = RESULT_TTL,
                         [K_FAILED] = DEAD_TTL}) do
    local old = redis.call('ZRANGEBYSCORE', set, '-inf', now - ttl, 'LIMIT', 0, TRIM_BATCH)
    if #old > 0 and releases_pending() then
      -- A task whose children are still being moved on stays until they are: its id
      -- must not be free for a new task meanwhile (see `drain`).
      local kept = {}
      for _, id in ipairs(old) do
        if redis.call('EXISTS', K_WAITING .. ':' .. id) == 0 then
          kept[#kept + 1] = id
        end
      end
      old = kept
    end
    if #old > 0 then
      local keys = {}
      for i, id in ipairs(old) do
        keys[i] = PREFIX .. id
      end
      redis.call('DEL', unpack(keys))
      redis.call('ZREM', set, unpack(old))
    end
  end
end

-- Once per run: apply the batched set changes, count the tasks made final per minute,
-- trim, and tell waiters which tasks became final.
local function flush(now)
  for set, ids in pairs(leaving) do
    for i = 1, #ids, 1000 do
      redis.call('ZREM', set, unpack(ids, i, math.min(i + 999, #ids)))
    end
  end
  for set, items in pairs(arriving) do
    zadd_all(set, items)
  end
  leaving, arriving = {}, {}
  if next(counted) then
    local key = STATS_PREFIX .. math.floor(now / 60000)
    for status, n in pairs(counted) do
      redis.call('HINCRBY', key, status, n)
    end
    redis.call('PEXPIRE', key, STATS_TTL)
    counted = {}
  end
  if next(finished_ids) then
    trim(now)
    redis.call('PUBLISH', CHANNEL, table.concat(finished_ids))
    finished_ids = {}
  end
end

-- True when the hash at `key` is a final task past its retention: reads hide it already
-- and the next trim deletes it, so it counts as gone.
local function expired(key, now)
  local h = read(key, 'status', 'finished')
  if not h or not h[2] then
    return false
  end
  local ttl = RESULT_TTL
  if h[1] == 'failed' then
    ttl = DEAD_TTL
  elseif h[1] ~= 'completed' and h[1] ~= 'cancelled' then
    return false
  end
  return now - tonumber(h[2]) >= ttl
end

-- Delete a final task past its retention at once (see `expired`).
local function forget(id)
  redis.call('DEL', PREFIX .. id)
  redis.call('ZREM', K_COMPLETED, id)
  redis.call('ZREM', K_FAILED, id)
  redis.call('ZREM', K_CANCELLED, id)
end

-- Put a pending task where it belongs: ready now, or delayed until `due`. It keeps its
-- score, so a task handed back or retried keeps its place among equal priorities.
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

-- Move on the tasks waiting on the ended tasks of `ended` (a stack of {id, status}):
-- a child moves on when its parent completed and it waits on nothing else, or is
-- cancelled (naming the parent) when the parent failed or was cancelled, and so on
-- down the tree: a loop, not recursion, so a chain of any depth fits the Lua stack.
-- At most `release_budget` children per run: what is left goes to the list
-- K_RELEASING as "<status>:<id>" entries, which the next runs of the dequeue script
-- (any worker's, and every heartbeat's) take up (see `continue_releases`), so no run
-- blocks Redis for long, however large the tree.
local function drain(ended, now)
  while #ended > 0 and release_budget > 0 do
    local top = ended[#ended]
    local parent, parent_status = top[1], top[2]
    local asked = release_budget
    local children = redis.call('SPOP', K_WAITING .. ':' .. parent, asked)
    release_budget = release_budget - #children
    if #children < asked then
      table.remove(ended)  -- its set is empty now (SPOP gave less than asked)
    end
    local reason = 'parent task ' .. parent .. ' failed'
    if parent_status == 'cancelled' then
      reason = 'parent task ' .. parent .. ' was cancelled'
    end
    for _, child in ipairs(children) do
      local key = PREFIX .. child
      local h = read(key, 'status', 'deps', 'score', 'due')
      if h and h[1] == 'pending' and (tonumber(h[2]) or 0) > 0 then
        if parent_status == 'completed' then
          if redis.call('HINCRBY', key, 'deps', -1) <= 0 then
            redis.call('ZREM', K_WAITING, child)
            schedule(child, h[3], tonumber(h[4]), now)
          end
        else
          leave_waiting(child)
          fence(key)
          finish_one(child, 'cancelled', now, {'reason', reason}, K_WAITING)
          ended[#ended + 1] = {child, 'cancelled'}
        end
      end
    end
  end
  local queued = false
  for _, left in ipairs(ended) do
    if redis.call('EXISTS', K_WAITING .. ':' .. left[1]) == 1 then  -- children left
      redis.call('RPUSH', K_RELEASING, left[2] .. ':' .. left[1])
      queued = true
    end
  end
  if queued then
    wake()  -- an idle worker's dequeue goes on with them
  end
end

-- The task `id` became final with `status`: move on the tasks waiting on it.
release_children = function(id, status, now)
  drain({{id, status}}, now)
end

-- Go on with the ended tasks whose waiting children earlier runs left (see `drain`).
local function continue_releases(now)
  while release_budget > 0 do
    local entry = redis.call('LPOP', K_RELEASING)
    if not entry then
      return
    end
    release_budget = release_budget - 1  -- an entry counts too: a run takes a bounded few
    local colon = string.find(entry, ':', 1, true)
    local id, status = string.sub(entry, colon + 1), string.sub(entry, 1, colon - 1)
    local h = read(PREFIX .. id, 'status')
    if h and h[1] == status then
      drain({{id, status}}, now)
    end  -- else stale: the task is gone, or lives again; its children were dealt with
  end
end

-- True when some ended task still has children to move on (see `drain`): only then can
-- `settle_release` have anything to do.
releases_pending = function()
  return redis.call('LLEN', K_RELEASING) > 0
end

-- Before the id of a final task is used again or deleted (requeue, purge, trim, an
-- enqueue after its retention): move on, at once, the children that its end left for
-- later runs, so that no later run acts on the children of the id's next life. Unbounded
-- for that one tree, but only in this corner: its release is still under way.
local function settle_release(id, status, now)
  if redis.call('EXISTS', K_WAITING .. ':' .. id) == 1 then
    local saved = release_budget
    release_budget = 2147483647
    drain({{id, status}}, now)
    release_budget = saved
    -- (An entry left without its set is harmless: continue_releases drops what no
    -- longer matches its task.)
    redis.call('LREM', K_RELEASING, 0, status .. ':' .. id)
  end
end

-- Hold a pending task back until its parents complete: it joins the waiting set and
-- each open parent's set. `open` lists the parents that have not completed.
local function wait_for_parents(id, open, now)
  for _, parent in ipairs(open) do
    redis.call('SADD', K_WAITING .. ':' .. parent, id)
  end
  redis.call('HSET', PREFIX .. id, 'deps', #open)
  redis.call('ZADD', K_WAITING, now, id)
end

-- Check that the caller may report `done` on the task. Returns the fields read (status,
-- token, then the `more` fields asked for) when it may go on, or nil and the reply to
-- return at once: 1 already `done` by this holder (a repeated report), 0 refused (stale
-- holder), -1 no such task, -2 final already (an administrative call).
local function check_holder(key, token, done, ...)
  local h = read(key, 'status', 'token', ...)
  if not h then
    return nil, -1
  end
  local status = h[1]
  if token ~= '' then
    if h[2] ~= token then
      return nil, 0
    end
    if status == done then
      return nil, 1
    end
    if status ~= 'processing' then
      return nil, 0
    end
    return h, nil
  end
  if status == done then
    return nil, 1
  end
  if status == 'completed' or status == 'failed' or status == 'cancelled' then
    return nil, -2
  end
  return h, nil
end

-- The set a non-final task is in, for `finish`.
local function holder_set(status)
  if status == 'processing' then
    return K_INFLIGHT
  end
  return nil
end
