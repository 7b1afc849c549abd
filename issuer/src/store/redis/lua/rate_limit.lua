-- KEYS: bucket; ARGV: now (seconds, fractional), per_second, burst, ttl
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(b[1]) or burst
local updated = tonumber(b[2]) or now
tokens = math.min(tokens + math.max(now - updated, 0) * rate, burst)
local retry = 0
if tokens >= 1 then tokens = tokens - 1
else retry = math.max(math.ceil((1 - tokens) / rate), 1) end
-- Never moved back: replicas' clocks differ, and a replica behind moving it back would let
-- the next replica ahead refill the difference at every call.
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(now, updated)))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return retry
