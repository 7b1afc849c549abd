-- KEYS: value, index; ARGV: value, exp, index member
local exp = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', ARGV[2])
local t = tonumber(redis.call('TIME')[1])
redis.call('EXPIRE', KEYS[1], math.max(exp - t, 0) + 3600)
redis.call('ZADD', KEYS[2], exp, ARGV[3])
return 1
