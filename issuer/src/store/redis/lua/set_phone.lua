-- KEYS: user; ARGV: has phone, phone, now ('' to leave updated_at), guarded ('1': only if the
-- phone is still the next argument), expected
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'phone') ~= ARGV[5] then return 0 end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'phone', ARGV[2])
else redis.call('HDEL', KEYS[1], 'phone') end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'updated_at', ARGV[3]) end
return 1
