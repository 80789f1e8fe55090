-- purge.lua: delete up to a batch of tasks in one state (never processing ones).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 state: pending, completed, failed or cancelled; 6 batch size.
-- Returns: how many were deleted; 0 means none are left (a run can make more tasks final:
-- the children of a purged task whose release was still under way, see lib.lua).

local state, batch = ARGV[5], tonumber(ARGV[6])
local sets = {K_READY, K_DELAYED, K_WAITING}
if state == 'completed' then
  sets = {K_COMPLETED}
elseif state == 'failed' then
  sets = {K_FAILED}
elseif state == 'cancelled' then
  sets = {K_CANCELLED}
end
local deleted = 0
local settling = state ~= 'pending' and releases_pending()
for _, set in ipairs(sets) do
  local ids = redis.call('ZRANGE', set, 0, batch - deleted - 1)
  for _, id in ipairs(ids) do
    if set == K_WAITING then
      leave_waiting(id)
    elseif settling then
      settle_release(id, state, now_ms())  -- its children move on before it goes
    end
    redis.call('ZREM', set, id)
    redis.call('DEL', PREFIX .. id, K_WAITING .. ':' .. id)
    finished_ids[#finished_ids + 1] = #id .. ':' .. id
    deleted = deleted + 1
  end
  if deleted >= batch then
    break
  end
end
flush(now_ms())
return deleted
