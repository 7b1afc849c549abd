-- KEYS: access_ttls; ARGV: access_ttl, now, forget_before
-- Keeps the latest report per lifetime, forgets those last reported before forget_before,
-- returns the rest as a flat list: ttl, reported_at, ttl, reported_at, ...
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > last then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local forget_before = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < forget_before then
    redis.call('HDEL', KEYS[1], all[i])
  else
    kept[#kept + 1] = tonumber(all[i])
    kept[#kept + 1] = tonumber(all[i + 1])
  end
end
return kept
