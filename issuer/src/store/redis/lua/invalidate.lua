-- KEYS: wx; ARGV: hash
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'sealed', 'hash', 'expires_at', 'refresh_at')
return 1
