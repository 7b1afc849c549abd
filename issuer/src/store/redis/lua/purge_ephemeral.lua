-- KEYS: index; ARGV: prefix, now, batch
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, name in ipairs(names) do
  redis.call('DEL', ARGV[1] .. 'eph:' .. name)
  redis.call('ZREM', KEYS[1], name)
end
return #names
