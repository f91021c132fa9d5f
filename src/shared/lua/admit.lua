-- Admits one attempt on a key against the limits every replica shares,
-- atomically, on Redis's clock. All keys carry the key id's hash tag.
-- KEYS: 1 slots (zset lease -> expiry ms, per model), 2 rpm window,
--       3 tpm window (hashes second -> amount), 4 rpd counter (per day),
--       5 budget spend (per period, nano-dollars), 6 budget holds (zset
--       "lease:nanos" -> expiry ms), 7 the "someone waits" flag.
-- ARGV: 1 lease id, 2 cap (0: none), 3 lease ms, 4 rpm, 5 tpm, 6 rpd
--       (0: none), 7 tokens, 8 the day's end (ms), 9 budget limit (nanos,
--       0: none), 10 reservation (nanos), 11 spend known to the caller
--       (nanos; taken only when Redis has none for the period), 12 the
--       period's end (ms, 0: never).
-- Returns {1, second counted, spend} or {0, reason, retry at ms, spend};
-- reasons: 1 slots, 2 window, 3 budget reserved, 4 budget spent; spend
-- -1 without a budget.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = ARGV[1]
local cap, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, rpd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, day_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local limit = tonumber(ARGV[9])
local floor, period_end = tonumber(ARGV[11]), tonumber(ARGV[12])

local spent = -1
if limit > 0 then
  local stored = redis.call('GET', KEYS[5])
  spent = tonumber(stored or '0')
  -- A replica restored from the ledger may know of spend Redis lost. Only
  -- then: a replica's meter also holds its own charges whose releases are
  -- on their way, and raising Redis's spend to it would count them twice.
  if not stored and floor > spent then
    spent = floor
    redis.call('SET', KEYS[5], floor)
    if period_end > 0 then redis.call('PEXPIREAT', KEYS[5], period_end + 86400000) end
  end
end

if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then
    redis.call('SET', KEYS[7], '1', 'PX', 5000)
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 1, tonumber(first[2]), spent}
  end
end

-- When `need` more fits under `max` in the window of the last 60 seconds
-- (nil: now); forgets the seconds that left it.
local function window(key, max, need)
  local all = redis.call('HGETALL', key)
  local live, stale, used = {}, {}, 0
  for i = 1, #all, 2 do
    local s, n = tonumber(all[i]), tonumber(all[i + 1])
    if s + 60 <= sec then
      table.insert(stale, all[i])
    else
      used = used + n
      table.insert(live, {s, n})
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if need > max then need = max end
  if used + need <= max then return nil end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, bucket in ipairs(live) do
    used = used - bucket[2]
    if used + need <= max then return (bucket[1] + 60) * 1000 end
  end
  return (sec + 60) * 1000
end

local retry = nil
if rpm > 0 then retry = window(KEYS[2], rpm, 1) end
if tpm > 0 then
  local at = window(KEYS[3], tpm, tokens)
  if at and (not retry or at > retry) then retry = at end
end
if rpd > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= rpd then
  if not retry or day_end > retry then retry = day_end end
end
if retry then return {0, 2, retry, spent} end

if limit > 0 then
  if spent >= limit then return {0, 4, period_end, spent} end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$') or '0')
  end
  -- Admitted while anything is left: the overshoot is one reservation.
  if spent + held >= limit then
    redis.call('SET', KEYS[7], '1', 'PX', 5000)
    return {0, 3, now + 1000, spent}
  end
end

-- Keeps `key` alive `ms` more, never less than it had: a replica with a
-- shorter lease must not take the others' longer leases with it.
local function outlive(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

if cap > 0 then
  redis.call('ZADD', KEYS[1], now + lease_ms, lease)
  outlive(KEYS[1], lease_ms * 2)
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[2], sec, 1)
  redis.call('PEXPIRE', KEYS[2], 61000)
end
if tpm > 0 and tokens > 0 then
  redis.call('HINCRBY', KEYS[3], sec, tokens)
  redis.call('PEXPIRE', KEYS[3], 61000)
end
if rpd > 0 then
  redis.call('INCR', KEYS[4])
  redis.call('PEXPIREAT', KEYS[4], day_end + 3600000)
end
if limit > 0 then
  -- ARGV[10] as the caller wrote it: the member it releases and renews.
  redis.call('ZADD', KEYS[6], now + lease_ms, lease .. ':' .. ARGV[10])
  outlive(KEYS[6], lease_ms * 2)
end
return {1, sec, spent}
