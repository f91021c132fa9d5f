-- Extends a running attempt's slot lease and budget hold (only if they
-- are still there: an expired lease is not brought back).
-- KEYS: 1 slots, 2 budget holds. ARGV: 1 lease id, 2 hold member, 3 lease ms.
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', until_ms, ARGV[2])
-- Never shortened: other replicas' leases in them may be longer.
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and ttl < tonumber(ARGV[3]) * 2 then redis.call('PEXPIRE', key, tonumber(ARGV[3]) * 2) end
end
return renewed
