-- KEYS: wx; ARGV: holder, now, lease_until
local holder = redis.call('HGET', KEYS[1], 'lease_holder')
local until_ = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if holder and holder ~= ARGV[1] and until_ > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'lease_holder', ARGV[1], 'lease_until', ARGV[3])
return 1
