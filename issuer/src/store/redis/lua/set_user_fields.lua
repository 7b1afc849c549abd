-- KEYS: user; ARGV: now, call id, n, then n field/expected pairs (a guard: the field must
-- hold the expected value, '' for absent), then field/value pairs ('' deletes the field)
-- Returns 0 when there is no such user, 2 when a guard fails (nothing written), else 1.
-- A guarded write keeps its call's id (`guarded_by`): the cluster client sends a script
-- again when its answer was lost, and that run, finding its guard failed by its own first
-- run's write, answers 1 as the first did (an unban applied was answered 409, "the ban
-- changed").
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local guards = tonumber(ARGV[3])
for i = 4, 3 + 2 * guards, 2 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then
    if redis.call('HGET', KEYS[1], 'guarded_by') == ARGV[2] then return 1 end
    return 2
  end
end
for i = 4 + 2 * guards, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if guards > 0 then redis.call('HSET', KEYS[1], 'guarded_by', ARGV[2]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
return 1
