-- KEYS: session, its family set (one slot: the family's)
-- ARGV: the key prefix of the family's refresh tokens (`P{s:<family>}refresh:` on a cluster)
-- Removes an ended session and every refresh token it was given. Returns {sub or '',
-- code_hash or '', tokens removed}.
local fields = redis.call('HMGET', KEYS[1], 'sub', 'code_hash')
local hashes = redis.call('SMEMBERS', KEYS[2])
for _, hash in ipairs(hashes) do redis.call('DEL', ARGV[1] .. hash) end
redis.call('DEL', KEYS[2], KEYS[1])
return {fields[1] or '', fields[2] or '', #hashes}
