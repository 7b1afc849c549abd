-- KEYS: wx; ARGV: holder
if redis.call('HGET', KEYS[1], 'lease_holder') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease_holder', 'lease_until')
end
return 1
