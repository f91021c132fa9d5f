-- Ends an admitted attempt: frees its slot and budget hold, charges its
-- cost, puts its real tokens in the tpm window in place of the estimate,
-- tells waiting replicas a place freed, and every replica when the budget
-- is spent.
-- KEYS: 1 slots, 2 budget holds, 3 budget spend, 4 tpm window, 5 the
--       "someone waits" flag.
-- ARGV: 1 lease id, 2 reservation (nanos), 3 cost (nanos, 0: none),
--       4 tokens used minus reserved, 5 the second they were counted at,
--       6 the period's end (ms, 0: never), 7 channel, 8 message, 9 the
--       budget (nanos, 0: none), 10 the start of the "spent" message,
--       which the total ends.
local sec = tonumber(redis.call('TIME')[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. ARGV[2])
local cost = tonumber(ARGV[3])
if cost > 0 then
  local total = redis.call('INCRBY', KEYS[3], cost)
  local period_end = tonumber(ARGV[6])
  if period_end > 0 then redis.call('PEXPIREAT', KEYS[3], period_end + 86400000) end
  local limit = tonumber(ARGV[9])
  if limit > 0 and total >= limit and total - cost < limit then
    redis.call('PUBLISH', ARGV[7], ARGV[10] .. string.format('%d', total) .. '}')
  end
end
local delta, at = tonumber(ARGV[4]), ARGV[5]
if delta ~= 0 and tonumber(at) + 60 > sec and redis.call('HEXISTS', KEYS[4], at) == 1 then
  if redis.call('HINCRBY', KEYS[4], at, delta) < 0 then redis.call('HSET', KEYS[4], at, 0) end
end
if redis.call('DEL', KEYS[5]) == 1 then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return 1
