-- KEYS: seq, purged_through, by_seq, entries; ARGV: after, now, limit
local current = tonumber(redis.call('GET', KEYS[1]) or '1')
local watermark = tonumber(redis.call('GET', KEYS[2]) or '0')
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {current, watermark}
local cursor = ARGV[1]
local found = 0
while found < limit do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. cursor, '+inf', 'LIMIT', 0, 1000)
  if #batch == 0 then break end
  local values = redis.call('HMGET', KEYS[4], unpack(batch))
  for i, json in ipairs(values) do
    cursor = batch[i]
    if json and cjson.decode(json)['until'] >= now then
      out[#out + 1] = json
      found = found + 1
      if found >= limit then break end
    end
  end
end
return out
