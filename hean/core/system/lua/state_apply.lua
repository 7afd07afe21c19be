-- The state bus's one write path (hean.core.system._state_core.APPLY).
-- KEYS: the state hashes. ARGV[1]: max value bytes; then 7 args per operation: kind, channel,
-- message header, expected version ('' = any), a, b, c.
-- It validates every operation before writing anything (Redis does not roll back a script
-- that fails half-way), then writes and publishes. The JSON helpers work on the raw text of
-- compact JSON written by `encode_value` (cjson would turn [] into {} and round numbers).
local function skip(s, i)
  local c = string.byte(s, i)
  if c == 34 then
    local j = i + 1
    while true do
      local k = string.find(s, '["\\]', j)
      if not k then error('hean: malformed JSON string') end
      if string.byte(s, k) == 92 then j = k + 2 else return k + 1 end
    end
  elseif c == 123 or c == 91 then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '["%[%]{}]', j)
      if not k then error('hean: malformed JSON container') end
      local d = string.byte(s, k)
      if d == 34 then
        j = skip(s, k)
      else
        if d == 123 or d == 91 then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  else
    return string.find(s, '[,%]}]', i) or (#s + 1)
  end
end

local function members(s)
  if string.byte(s, 1) ~= 123 then return nil end
  local keys, vals = {}, {}
  if s == '{}' then return keys, vals end
  local i = 2
  while true do
    local ke = skip(s, i)
    local k = string.sub(s, i, ke - 1)
    local ve = skip(s, ke + 1)
    if vals[k] == nil then keys[#keys + 1] = k end
    vals[k] = string.sub(s, ke + 1, ve - 1)
    if string.byte(s, ve) == 125 then return keys, vals end
    i = ve + 1
  end
end

local function items_of(s)
  if string.byte(s, 1) ~= 91 then return nil end
  local items = {}
  if s == '[]' then return items end
  local i = 2
  while true do
    local e = skip(s, i)
    items[#items + 1] = string.sub(s, i, e - 1)
    if string.byte(s, e) == 93 then return items end
    i = e + 1
  end
end

local function object_text(keys, vals)
  local parts = {}
  for n, k in ipairs(keys) do parts[n] = k .. ':' .. vals[k] end
  return '{' .. table.concat(parts, ',') .. '}'
end

local LIMIT = 9007199254740992
local function add(cur, amt)
  local a = tonumber(amt)
  local c = 0
  local int = not string.find(amt, '[%.eE]')
  if cur ~= nil then
    if not string.find(cur, '^%-?%d') then return nil, 'is not a number' end
    c = tonumber(cur)
    int = int and not string.find(cur, '[%.eE]')
  end
  local r = c + a
  if r ~= r or r == math.huge or r == -math.huge then return nil, 'result is not finite' end
  if int then
    if c >= LIMIT or c <= -LIMIT or r >= LIMIT or r <= -LIMIT then
      return nil, 'integer outside +-2^53'
    end
    return string.format('%.0f', r)
  end
  local txt
  for p = 15, 17 do
    txt = string.format('%.' .. p .. 'g', r)
    if tonumber(txt) == r then break end
  end
  if not string.find(txt, '[%.eE]') then txt = txt .. '.0' end
  return txt
end

local max_bytes = tonumber(ARGV[1])
local state = {}
local writes = {}
local out = {'ok', ''}
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 7
  local kind, expected, x, y, z = ARGV[b + 1], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local s = state[KEYS[i]]
  if s == nil then
    local r = redis.call('HMGET', KEYS[i], 'value', 'version')
    s = {value = r[1], version = tonumber(r[2]) or 0}
    state[KEYS[i]] = s
  end
  if expected ~= '' and tonumber(expected) ~= s.version then
    return {'mismatch', i, s.version}
  end
  local new = nil
  local returned = ''
  if kind == 'set' then
    new = x
  elseif kind == 'del' then
    if s.value then
      new = false
      returned = '1'
    end
  elseif kind == 'incr' or kind == 'merge' then
    local cur = s.value
    if not cur or cur == 'null' then cur = '{}' end
    local keys, vals = members(cur)
    if not keys then return {'error', i, 'stored value is not a JSON object'} end
    local dk, dv = members(x)
    for _, k in ipairs(dk) do
      local v = dv[k]
      if kind == 'incr' then
        local err
        v, err = add(vals[k], v)
        if not v then return {'error', i, 'field ' .. k .. ' ' .. err} end
      end
      if vals[k] == nil then keys[#keys + 1] = k end
      vals[k] = v
    end
    new = object_text(keys, vals)
    returned = new
  elseif kind == 'append' then
    local keys, vals, target
    if x == '' then
      target = s.value
      if not target or target == 'null' then target = '[]' end
    else
      local cur = s.value
      if not cur or cur == 'null' then cur = '{}' end
      keys, vals = members(cur)
      if not keys then return {'error', i, 'stored value is not a JSON object'} end
      target = vals[x] or '[]'
      if target == 'null' then target = '[]' end
    end
    local items = items_of(target)
    if not items then return {'error', i, 'append target is not a JSON array'} end
    for _, it in ipairs(items_of(y)) do items[#items + 1] = it end
    local first = 1
    local maxn = tonumber(z)
    if maxn and #items > maxn then first = #items - maxn + 1 end
    local arr = '[' .. table.concat(items, ',', first, #items) .. ']'
    if x == '' then
      new = arr
    else
      if vals[x] == nil then keys[#keys + 1] = x end
      vals[x] = arr
      new = object_text(keys, vals)
    end
    returned = new
  else
    return {'error', i, 'unknown operation ' .. tostring(kind)}
  end
  if new and #new > max_bytes then
    return {'error', i, 'resulting value is ' .. #new .. ' bytes, over the limit of ' .. max_bytes}
  end
  if new ~= nil then
    s.version = s.version + 1
    s.value = new
    writes[#writes + 1] = {KEYS[i], ARGV[b + 2], ARGV[b + 3], s.version, new}
  end
  out[#out + 1] = s.version
  out[#out + 1] = returned
end
if #writes > 0 then
  local t = redis.call('TIME')
  local ts = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  out[2] = ts
  for _, w in ipairs(writes) do
    local v = string.format('%d', w[4])
    if w[5] then
      redis.call('HSET', w[1], 'value', w[5], 'version', v, 'ts', ts)
    else
      redis.call('HDEL', w[1], 'value')
      redis.call('HSET', w[1], 'version', v, 'ts', ts)
    end
    redis.call('PUBLISH', w[2], w[3] .. '"version":' .. v .. ',"timestamp":' .. ts ..
      ',"deleted":' .. (w[5] and 'false' or 'true') .. ',"value":' .. (w[5] or 'null') .. '}')
  end
end
return out
