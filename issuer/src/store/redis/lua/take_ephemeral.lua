-- KEYS: value, index; ARGV: now, index member, taker (this call's id)
-- Taking marks the value with its taker and keeps it 60 s more instead of deleting it: the
-- cluster client sends a script again when its answer was lost, and that run must get what
-- the first one took (deleted, a web login whose answer was lost failed 400). Any other
-- taker gets nothing.
redis.call('ZREM', KEYS[2], ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'v', 'exp', 'taken_by')
if not f[1] then return false end
if f[3] then
  if f[3] == ARGV[3] then return f[1] end
  return false
end
if tonumber(f[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('HSET', KEYS[1], 'taken_by', ARGV[3])
redis.call('EXPIRE', KEYS[1], 60)
return f[1]
