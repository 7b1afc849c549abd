-- KEYS: keys; ARGV: kid, record JSON, only-if-none-active-at or ''
if ARGV[3] ~= '' then
  local now = tonumber(ARGV[3])
  for _, json in ipairs(redis.call('HVALS', KEYS[1])) do
    if cjson.decode(json)['activate_at'] <= now then return 0 end
  end
end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
