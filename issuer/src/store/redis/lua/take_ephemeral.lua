-- KEYS: value, index, taken (the value once taken); ARGV: now, index member, taker (this
-- call's id)
-- Taking moves the value to its own key, marked with its taker and kept 60 s, instead of
-- deleting it: the cluster client sends a script again when its answer was lost, and that run
-- must get what the first one took (deleted, a web login whose answer was lost failed 400).
-- Any other taker gets nothing. Moved rather than marked in place: a replica of an earlier
-- release (a rolling upgrade) takes by name alone, and took a value marked in place again.
local t = redis.call('HMGET', KEYS[3], 'v', 'taken_by')
if t[1] and t[2] == ARGV[3] then return t[1] end
redis.call('ZREM', KEYS[2], ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'v', 'exp', 'taken_by')
if not f[1] then return false end
-- Marked in place by the release before this one.
if f[3] then
  if f[3] == ARGV[3] then return f[1] end
  return false
end
if tonumber(f[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('RENAME', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[3], 'taken_by', ARGV[3])
redis.call('EXPIRE', KEYS[3], 60)
return f[1]
