-- KEYS: wx; ARGV: sealed, hash, expires_at, refresh_at, holder
redis.call('HSET', KEYS[1], 'sealed', ARGV[1], 'hash', ARGV[2], 'expires_at', ARGV[3], 'refresh_at', ARGV[4])
if redis.call('HGET', KEYS[1], 'lease_holder') == ARGV[5] then
  redis.call('HDEL', KEYS[1], 'lease_holder', 'lease_until')
end
return 1
