-- KEYS: access_ttls; ARGV: access_ttl, now, forget_before
-- Keeps the latest report per lifetime and forgets those last reported before forget_before.
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > last then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local forget_before = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < forget_before then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 1
