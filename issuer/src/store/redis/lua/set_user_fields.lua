-- KEYS: user; ARGV: now, n, then n field/expected pairs (a guard: the field must hold the
-- expected value, '' for absent), then field/value pairs ('' deletes the field)
-- Returns 0 when there is no such user, 2 when a guard fails (nothing written), else 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local guards = tonumber(ARGV[2])
for i = 3, 2 + 2 * guards, 2 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 2 end
end
for i = 3 + 2 * guards, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
return 1
