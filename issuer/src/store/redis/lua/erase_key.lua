-- KEYS: keys; ARGV: kid, the record as read, the record with its sealed key erased
-- Writes the erased record only over the one read (another replica may have changed it
-- meanwhile: the caller reads again). Answers 1 when written or already erased alike, 0 when
-- the record changed, -1 when it is gone.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if current == ARGV[3] then return 1 end
if current ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
