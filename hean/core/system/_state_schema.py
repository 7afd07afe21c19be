"""Shared core of the state bus: key schema, codec, Lua script, messages and subscription logic.

Both faces of :mod:`hean.core.system.redis_state` (async and sync) use exactly this module;
they differ only in how they talk to Redis.

Storage
    Each state key is ONE Redis hash ``hean:state:{<namespace>}:<key>`` with the fields
    ``value`` (compact JSON text, absent after a delete), ``version`` (integer, +1 on every
    change, never reset: a delete keeps the hash as a tombstone so a recreated key continues
    from the next version) and ``ts`` (Redis server time of the change, seconds as
    ``"<sec>.<usec>"``). The ``{<namespace>}`` braces are a cluster hash tag, so one
    namespace lives in one slot and a batch within a namespace stays atomic on a cluster.

Changes
    Every change goes through one Lua script (:data:`APPLY_SCRIPT`) that validates all
    operations of a call first, then writes value+version+ts and PUBLISHes the update on
    ``hean:state-ch:<namespace>:<key>`` in the same atomic step. The WATCH/MULTI/EXEC path
    runs that same script inside its MULTI block.

Messages
    The published payload is JSON ``{"namespace", "key", "version", "timestamp", "deleted",
    "value"}``; :class:`StateUpdate` is its typed form.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# --------------------------------------------------------------------------- limits & names

#: Largest encoded value (UTF-8 bytes of the compact JSON), also enforced server-side for the
#: results of increment / merge / append.
MAX_VALUE_BYTES = 1024 * 1024
#: Default namespace, as in the original docs.
DEFAULT_NAMESPACE = "global"
#: ``namespace``: 1-64 chars, letters, digits, ``_ . -``, not starting with ``.`` or ``-``.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
#: ``key``: 1-200 chars, letters, digits, ``_ . - : /``, not starting with a separator.
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}$")
#: Deepest nesting the codec accepts.
MAX_DEPTH = 64
#: Integers that Lua's increments can handle exactly (Lua numbers are doubles).
LUA_INT_LIMIT = 2**53

KEY_PREFIX = "hean:state:"
CHANNEL_PREFIX = "hean:state-ch:"
#: Pattern matching every state channel (for tools that want all of them).
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"
#: Per-manager control channel prefix used to wake the subscription listener.
CONTROL_PREFIX = "hean:state-ctl:"


# --------------------------------------------------------------------------- errors


class StateError(Exception):
    """Base class of every state-bus error."""


class StateValidationError(StateError, ValueError):
    """Bad input (name, value, size, operation); nothing was written."""


class StateOperationError(StateError, ValueError):
    """A server-side operation does not fit the stored value (e.g. incrementing a string)."""

    def __init__(self, namespace: str, key: str, reason: str) -> None:
        super().__init__(f"state {namespace}:{key}: {reason}; nothing was written")
        self.namespace, self.key, self.reason = namespace, key, reason


class VersionMismatchError(StateError):
    """A compare-and-set found another version than expected; nothing was written."""

    def __init__(self, namespace: str, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"state {namespace}:{key}: expected version {expected}, found {actual}; "
            "nothing was written"
        )
        self.namespace, self.key, self.expected, self.actual = namespace, key, expected, actual


class StateConflictError(StateError):
    """update_state_atomic lost the WATCH race `attempts` times in a row; nothing was written."""

    def __init__(self, namespace: str, key: str, attempts: int) -> None:
        super().__init__(
            f"state {namespace}:{key}: concurrent writers won {attempts} times in a row; "
            "gave up (use a Lua operation such as increment_state for hot keys)"
        )
        self.namespace, self.key, self.attempts = namespace, key, attempts


class StateUnavailableError(StateError, ConnectionError):
    """Redis could not be reached. For a write the outcome is unknown (it may have applied)."""


# --------------------------------------------------------------------------- messages


class StateItem(NamedTuple):
    """What a subscription queue yields and what writes return: unpacks as a 3-tuple."""

    value: Any
    version: int
    timestamp: float


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """One change of one key, as published on its channel (``deleted`` marks a delete)."""

    namespace: str
    key: str
    value: Any
    version: int
    timestamp: float
    deleted: bool = False

    @property
    def item(self) -> StateItem:
        return StateItem(self.value, self.version, self.timestamp)

    def to_dict(self) -> dict[str, Any]:
        """The ``state_update`` event body of the Socket.IO contract."""
        return {
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "version": self.version,
            "timestamp": self.timestamp,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class StateOp:
    """One operation of a batch; build it with the class methods, then `batch_update([...])`."""

    kind: str
    key: str
    namespace: str = DEFAULT_NAMESPACE
    value: Any = None
    expected_version: int | None = None
    field: str | None = None
    max_length: int | None = None

    @classmethod
    def set(
        cls, key: str, value: Any, namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("set", key, namespace, value, expected_version)

    @classmethod
    def delete(
        cls, key: str, namespace: str = DEFAULT_NAMESPACE, *, expected_version: int | None = None
    ) -> StateOp:
        return cls("del", key, namespace, None, expected_version)

    @classmethod
    def increment(
        cls, key: str, increments: Mapping[str, int | float], namespace: str = DEFAULT_NAMESPACE,
        *, expected_version: int | None = None,
    ) -> StateOp:
        return cls("incr", key, namespace, dict(increments), expected_version)

    @classmethod
    def merge(
        cls, key: str, patch: Mapping[str, Any], namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("merge", key, namespace, dict(patch), expected_version)

    @classmethod
    def append(
        cls, key: str, items: Sequence[Any], namespace: str = DEFAULT_NAMESPACE, *,
        field: str | None = None, max_length: int | None = None,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("append", key, namespace, list(items), expected_version, field, max_length)


# --------------------------------------------------------------------------- names


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise StateValidationError(
            f"invalid namespace {namespace!r}: must match {NAMESPACE_RE.pattern}"
        )
    return namespace


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise StateValidationError(f"invalid state key {key!r}: must match {KEY_RE.pattern}")
    return key


def state_key(namespace: str, key: str) -> str:
    """Redis hash holding one state key: ``hean:state:{<namespace>}:<key>``."""
    return f"{KEY_PREFIX}{{{validate_namespace(namespace)}}}:{validate_key(key)}"


def state_channel(namespace: str, key: str) -> str:
    """Pub/sub channel of one state key: ``hean:state-ch:<namespace>:<key>``."""
    return f"{CHANNEL_PREFIX}{validate_namespace(namespace)}:{validate_key(key)}"


def _message_header(namespace: str, key: str) -> str:
    # Names match the regexes above, so they need no JSON escaping.
    return f'{{"namespace":"{namespace}","key":"{key}",'


# --------------------------------------------------------------------------- codec


def _check_json(value: Any, depth: int = 0) -> None:
    """Reject anything JSON would change or refuse (non-str keys, NaN, sets, objects...)."""
    if depth > MAX_DEPTH:
        raise StateValidationError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateValidationError(f"value contains a non-finite float {value!r}")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise StateValidationError(f"dict keys must be str, got {type(k).__name__} {k!r}")
            _check_json(v, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_json(v, depth + 1)
        return
    raise StateValidationError(f"value of type {type(value).__name__} cannot be stored as JSON")


def encode_value(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`; StateValidationError if it cannot be stored as is."""
    _check_json(value)
    try:
        data = json.dumps(
            value, allow_nan=False, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise StateValidationError(f"value cannot be encoded as JSON: {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise StateValidationError(
            f"encoded value is {len(data)} bytes, larger than the {MAX_VALUE_BYTES}-byte limit"
        )
    return data


def decode_value(data: bytes | str | None) -> Any:
    return None if data is None else json.loads(data)


def _encode_number(amount: Any) -> str:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise StateValidationError(f"increment must be an int or float, got {amount!r}")
    if isinstance(amount, float) and not math.isfinite(amount):
        raise StateValidationError(f"increment must be finite, got {amount!r}")
    if isinstance(amount, int) and abs(amount) >= LUA_INT_LIMIT:
        raise StateValidationError(f"integer increment {amount} is outside +-2**53")
    return json.dumps(amount)


# --------------------------------------------------------------------------- Lua

#: The one write path. KEYS: the state hashes. ARGV[1]: max value bytes; then 7 args per
#: operation: kind, channel, message header, expected version ('' = any), a, b, c.
#: It validates every operation before writing anything (Redis does not roll back a script
#: that fails half-way), then writes and publishes. The JSON helpers work on the raw text of
#: compact JSON written by `encode_value` (cjson would turn [] into {} and round numbers).
APPLY_SCRIPT = r"""
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
"""

APPLY_SHA = hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()

_ARGS_PER_OP = 7


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """KEYS and ARGV for one call of the apply script, plus what is needed to read its reply."""

    keys: list[str]
    args: list[str | bytes | int]
    ops: list[StateOp]
    values: list[Any]  # the Python value written by set ops (None otherwise)


def prepare(ops: Sequence[StateOp]) -> PreparedCall:
    """Validate and encode `ops`; raises StateValidationError before anything is sent."""
    if not ops:
        raise StateValidationError("a batch needs at least one operation")
    keys: list[str] = []
    args: list[str | bytes | int] = [MAX_VALUE_BYTES]
    values: list[Any] = []
    for op in ops:
        if not isinstance(op, StateOp):
            raise StateValidationError(f"batch items must be StateOp, got {type(op).__name__}")
        keys.append(state_key(op.namespace, op.key))
        expected: str | int = ""
        if op.expected_version is not None:
            if isinstance(op.expected_version, bool) or not isinstance(op.expected_version, int):
                raise StateValidationError(
                    f"expected_version must be an int, got {op.expected_version!r}"
                )
            expected = op.expected_version
        x: str | bytes = ""
        y: str | bytes = ""
        z: str | int = ""
        written: Any = None
        if op.kind == "set":
            x, written = encode_value(op.value), op.value
        elif op.kind == "del":
            pass
        elif op.kind == "incr":
            if not op.value:
                raise StateValidationError("increment needs at least one field")
            _check_field_names(op.value)
            parts = [f"{json.dumps(k, ensure_ascii=False)}:{_encode_number(v)}"
                     for k, v in op.value.items()]
            x = "{" + ",".join(parts) + "}"
        elif op.kind == "merge":
            if not isinstance(op.value, dict):
                raise StateValidationError("merge needs a mapping of fields")
            _check_field_names(op.value)
            x = encode_value(op.value)
        elif op.kind == "append":
            if op.field is not None:
                _check_field_names({op.field: None})
                x = json.dumps(op.field, ensure_ascii=False)
            y = encode_value(op.value)
            if op.max_length is not None:
                bad = isinstance(op.max_length, bool) or not isinstance(op.max_length, int)
                if bad or op.max_length < 1:
                    raise StateValidationError(
                        f"max_length must be an int >= 1, got {op.max_length!r}"
                    )
                z = op.max_length
        else:
            raise StateValidationError(f"unknown operation kind {op.kind!r}")
        args += [op.kind, state_channel(op.namespace, op.key),
                 _message_header(op.namespace, op.key), expected, x, y, z]
        values.append(written)
    return PreparedCall(keys, args, list(ops), values)


def _check_field_names(fields: Mapping[str, Any]) -> None:
    for name in fields:
        if not isinstance(name, str):
            raise StateValidationError(f"field names must be str, got {name!r}")


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def deleted_flags(reply: Sequence[Any]) -> list[bool]:
    """For each op of a successful reply: did it delete a value (only delete ops can)."""
    return [_text(raw) == "1" for raw in reply[3::2]]


def parse_reply(call: PreparedCall, reply: Sequence[Any]) -> list[StateItem]:
    """Turn the script's reply into one StateItem per op, or raise the matching error."""
    status = _text(reply[0])
    if status == "mismatch":
        op = call.ops[int(reply[1]) - 1]
        raise VersionMismatchError(
            op.namespace, op.key, int(op.expected_version or 0), int(reply[2])
        )
    if status == "error":
        op = call.ops[int(reply[1]) - 1]
        raise StateOperationError(op.namespace, op.key, _text(reply[2]))
    ts_text = _text(reply[1])
    timestamp = float(ts_text) if ts_text else 0.0
    items: list[StateItem] = []
    for n, op in enumerate(call.ops):
        version = int(reply[2 + 2 * n])
        returned = reply[3 + 2 * n]
        if op.kind == "set":
            value = call.values[n]
        elif op.kind == "del":
            value = None
        else:
            value = decode_value(returned)
        items.append(StateItem(value, version, timestamp))
    return items


def parse_hash(namespace: str, key: str, raw: Sequence[Any]) -> StateUpdate:
    """StateUpdate from ``HMGET <hash> value version ts`` (version 0 if never written)."""
    value_raw, version_raw, ts_raw = raw
    return StateUpdate(
        namespace,
        key,
        decode_value(value_raw),
        int(version_raw) if version_raw is not None else 0,
        float(ts_raw) if ts_raw is not None else 0.0,
        deleted=value_raw is None and version_raw is not None,
    )


HASH_FIELDS = ("value", "version", "ts")


def parse_message(data: bytes | str) -> StateUpdate:
    body = json.loads(data)
    return StateUpdate(
        body["namespace"], body["key"], body["value"], int(body["version"]),
        float(body["timestamp"]), bool(body.get("deleted", False)),
    )


# --------------------------------------------------------------------------- retry policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with full-jitter exponential backoff (seconds)."""

    max_retries: int = 64
    base: float = 0.0005
    cap: float = 0.05

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 30))))


#: Reconnect backoff of the subscription listener (seconds).
RECONNECT_POLICY = RetryPolicy(max_retries=1_000_000, base=0.05, cap=2.0)


@dataclass
class ManagerStats:
    """Counters of one manager (process-local)."""

    watch_conflicts: int = 0
    watch_updates: int = 0
    script_updates: int = 0
    resyncs: int = 0
    reconnects: int = 0


# --------------------------------------------------------------------------- subscriptions


@dataclass(eq=False)
class Sink:
    """One subscriber of one key: filters updates so it only ever moves forward."""

    namespace: str
    key: str
    channel: str
    deliver: Callable[[StateUpdate], None]
    last_version: int = -1  # -1: nothing delivered yet; the first item is always delivered
    stale: bool = False  # set after a reconnect: the next snapshot may move backwards
    on_first: Callable[[], None] | None = field(default=None, repr=False)

    def offer(self, update: StateUpdate, *, from_snapshot: bool) -> bool:
        """Deliver `update` if it is newer than what this sink has; returns True if delivered."""
        if from_snapshot and self.stale:
            self.stale = False
            if 0 <= update.version < self.last_version:
                # The server lost writes (e.g. restarted from an older AOF): follow it.
                self.last_version = update.version - 1
        if update.version <= self.last_version:
            return False
        first = self.last_version < 0
        self.last_version = update.version
        self.deliver(update)
        if first and self.on_first is not None:
            self.on_first()
        return True

    def needs_resync(self, update: StateUpdate) -> bool:
        """True when `update` does not follow directly on what this sink has seen."""
        return self.stale or self.last_version < 0 or update.version > self.last_version + 1


class SubscriptionHub:
    """Which sinks listen on which channel; pure bookkeeping shared by both faces."""

    def __init__(self) -> None:
        self.sinks: dict[str, list[Sink]] = {}

    def add(self, sink: Sink) -> None:
        self.sinks.setdefault(sink.channel, []).append(sink)

    def remove(self, sink: Sink) -> None:
        group = self.sinks.get(sink.channel)
        if group and sink in group:
            group.remove(sink)
            if not group:
                del self.sinks[sink.channel]

    def channels(self) -> list[str]:
        return list(self.sinks)

    def for_channel(self, channel: str) -> list[Sink]:
        return list(self.sinks.get(channel, ()))

    def all(self) -> Iterator[Sink]:
        for group in list(self.sinks.values()):
            yield from list(group)

    def mark_stale(self) -> None:
        for sink in self.all():
            sink.stale = True


def channel_text(raw: Any) -> str:
    return _text(raw)
