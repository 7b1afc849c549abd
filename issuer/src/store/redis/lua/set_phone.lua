-- KEYS: user; ARGV: has phone, phone, now
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'phone', ARGV[2])
else redis.call('HDEL', KEYS[1], 'phone') end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
return 1
