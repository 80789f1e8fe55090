-- stats.lua: read a queue's per-minute finish counts, which lib.lua's flush writes.
-- Runs on its own: lib.lua is not put in front of it.
-- KEYS 1 the name prefix of the per-minute hashes, "<tag>:stats:" (passed as a key so
--        the call goes to the queue's slot); a minute's hash is the prefix followed by
--        the minute number since the epoch (Redis clock)
-- ARGV 1 how many minutes, the current one included
-- Returns: {now (ms), completed, failed, cancelled, completed, failed, cancelled, ...}:
--          three counts per minute, oldest minute first.

local prefix, minutes = KEYS[1], tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = math.floor(now / 60000)
local out = {now}
for minute = current - minutes + 1, current do
  local counts = redis.call('HMGET', prefix .. minute, 'completed', 'failed', 'cancelled')
  for i = 1, 3 do
    out[#out + 1] = tonumber(counts[i]) or 0
  end
end
return out
