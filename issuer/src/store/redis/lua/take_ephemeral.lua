-- KEYS: value, index; ARGV: now, index member
local f = redis.call('HMGET', KEYS[1], 'v', 'exp')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if not f[1] then return false end
if tonumber(f[2]) <= tonumber(ARGV[1]) then return false end
return f[1]
