-- KEYS: wx; ARGV: sealed, hash, expires_at, refresh_at, holder
-- Written only while the holder holds the lease (see Store::put_wechat_token).
if redis.call('HGET', KEYS[1], 'lease_holder') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'sealed', ARGV[1], 'hash', ARGV[2], 'expires_at', ARGV[3], 'refresh_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_holder', 'lease_until')
return 1
