"""The Lua scripts of the Redis placement: each decision is one script, so it is atomic.

Keys (prefix `P`, default `dsfu:`):
  P node:{id}      hash url, capacity, load (rooms), sessions, draining; PEXPIRE = the lease
  P nodes          set of node ids (a member whose hash is gone is dropped when seen)
  P room:{name}    hash node, url, epoch; PEXPIRE until its owner confirms a session arrived
  P pending:{id}   zset room -> ms: rooms placed on the node that its load does not show yet
  P epoch          the fencing counter: every claim takes the next value, it never goes back
Computed key names make this single-Redis (or Sentinel) only, not Redis Cluster.
"""

# KEYS: room, nodes, epoch. ARGV: prefix, room, asking node, pending ttl ms, unconfirmed ttl ms.
# -> {node, url, epoch, placed (1) / existing (0) / no capacity (2)}
CLAIM = """
local prefix, room, asking = ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('HMGET', KEYS[1], 'node', 'url', 'epoch')
if owner[1] and redis.call('EXISTS', prefix .. 'node:' .. owner[1]) == 1 then
  return {owner[1], owner[2], owner[3], 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best, best_url, best_score = nil, nil, nil
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local f = redis.call('HMGET', prefix .. 'node:' .. id, 'url', 'capacity', 'load', 'draining')
  if not f[1] then
    redis.call('SREM', KEYS[2], id)
  elseif f[4] ~= '1' then
    local pending = prefix .. 'pending:' .. id
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', now - tonumber(ARGV[4]))
    local score = tonumber(f[3] or '0') + redis.call('ZCARD', pending)
    if score < tonumber(f[2] or '0') then
      local better = best == nil or score < best_score
      if not better and score == best_score then
        better = id == asking or (best ~= asking and id < best)
      end
      if better then best, best_url, best_score = id, f[1], score end
    end
  end
end
if not best then return {'', '', '0', 2} end
local epoch = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'node', best, 'url', best_url, 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('ZADD', prefix .. 'pending:' .. best, now, room)
return {best, best_url, tostring(epoch), 1}
"""

# KEYS: room. ARGV: prefix. -> {node, url, epoch} of a live owner, or {}.
LOCATE = """
local owner = redis.call('HMGET', KEYS[1], 'node', 'url', 'epoch')
if owner[1] and redis.call('EXISTS', ARGV[1] .. 'node:' .. owner[1]) == 1 then
  return {owner[1], owner[2], owner[3]}
end
return {}
"""

# KEYS: node, nodes, epoch, pending. ARGV: prefix, id, url, capacity, load, sessions, draining,
# lease ms, then pairs (room, epoch held, 0 if none) of the rooms this node serves.
# -> {lease was alive (1/0), n lost, lost rooms..., restored pairs (room, new epoch)...}
# A room still ours is confirmed (no expiry); a room whose claim is gone (Redis lost its data,
# or the unconfirmed claim expired) is ours again under a new epoch; a room another node holds
# now is lost: the caller stops serving it. The epoch counter is first raised to the largest
# epoch this node knows, so it only grows even across a Redis that lost its data.
HEARTBEAT = """
local prefix, id = ARGV[1], ARGV[2]
local alive = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'url', ARGV[3], 'capacity', ARGV[4], 'load', ARGV[5],
           'sessions', ARGV[6], 'draining', ARGV[7])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('SADD', KEYS[2], id)
local known = 0
for i = 9, #ARGV, 2 do
  local e = tonumber(ARGV[i + 1])
  if e > known then known = e end
end
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if current < known then redis.call('SET', KEYS[3], known) end
local lost, restored = {}, {}
for i = 9, #ARGV, 2 do
  local room, epoch = ARGV[i], ARGV[i + 1]
  local rk = prefix .. 'room:' .. room
  local cur = redis.call('HMGET', rk, 'node', 'epoch')
  if not cur[1] then
    local e = redis.call('INCR', KEYS[3])
    redis.call('HSET', rk, 'node', id, 'url', ARGV[3], 'epoch', e)
    table.insert(restored, room)
    table.insert(restored, tostring(e))
  elseif cur[1] == id and (cur[2] == epoch or epoch == '0') then
    redis.call('PERSIST', rk)
    if epoch == '0' then
      table.insert(restored, room)
      table.insert(restored, cur[2])
    end
  elseif cur[1] == id then
    redis.call('PERSIST', rk)
    table.insert(restored, room)
    table.insert(restored, cur[2])
  else
    table.insert(lost, room)
  end
  redis.call('ZREM', KEYS[4], room)
end
local out = {alive, #lost}
for _, v in ipairs(lost) do table.insert(out, v) end
for _, v in ipairs(restored) do table.insert(out, v) end
return out
"""

# KEYS: room, pending. ARGV: node, epoch. -> 1 released, 0 not ours (stale epoch) or gone.
RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
