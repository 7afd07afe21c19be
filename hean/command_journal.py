"""The command journal: a compact Redis window of recent request ids, so a command never runs
twice, and the history stream that carries every command, ack and result to the database.

Window: one small hash per request id, ``hean:cmd:{request_id}``, with the fields ``c`` (the
command's name, written atomically with the enqueue by the web process: the reservation),
``a`` (the ack's ``ack_time_ms``, once the ack was sent), ``s`` (when a worker started it),
``r`` (its result, until the history writer has it in the database) and ``d`` (set once the
result is in the database; ``r`` and ``s`` are then dropped). A key has no TTL until its result
is in the database; then it is kept ``HEAN_DEDUP_WINDOW_S`` (default 600 s) more. So whenever a
key is gone, the database knows everything the key knew: a request id missing from the window
is looked up there (hean/history.py), never run again. The envelope is not kept in the window:
the Celery message carries it, and the history stream takes it to the database. About 150 bytes
of Redis memory per command once its result is in the database (benchmarks/bench_history.py).

History stream ``hean:history`` (hean.topology.HISTORY_STREAM_KEY): one entry per batch, in the
same atomic step as the write it records: ``c`` (the new commands' envelopes, one JSON per line)
by the reservation, ``a`` (``request_id ack_time_ms`` per line) when acks are journaled, ``r``
(one result JSON per line) with the worker's commit. The history writer (hean/history.py)
copies them to the database in batches and trims what it wrote.

Every operation takes many request ids at once, so a batch of commands costs one round trip.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from hean import fastjson
from hean.celery_wire import IDS_FIELD, MessageFrame, escape_envelope
from hean.messages import REQUEST_ID_PATTERN, ack_message
from hean.redis_client import (
    NOT_DURABLE,
    ConnectionSource,
    Durability,
    OwnConnection,
    load_scripts,
    run_script,
    text,
)
from hean.topology import HISTORY_STREAM_KEY


class HistoryUnavailable(RuntimeError):
    """The database could not be read (the caller retries; nothing was decided). Here rather than
    in hean.history, so that the engine worker names it without importing SQLAlchemy."""


class History(Protocol):
    """What the journal and the intake ask the database (hean.history.HistoryStore): the records
    (with `command`, `envelope`, `ack`, `result`) of those request ids it knows (`answered`:
    those with a result, on the hot path), and whether its calls wait where a green deadline
    cannot interrupt them (`waits_in_c`)."""

    def lookup(self, request_ids: Sequence[str], answered_only: bool = False) -> Mapping[str, Any]: ...

    def answered(self, request_ids: Sequence[str]) -> Mapping[str, Any]: ...

    @property
    def waits_in_c(self) -> bool: ...


KEY_PREFIX = "hean:cmd:"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN).match

#: Markers START_LUA returns instead of a result: the command ran and its result is in the
#: database (``IN_DATABASE``), or the window does not know the request id (``UNKNOWN``: it left
#: the window, or was never reserved through the web): the database decides.
IN_DATABASE = "="
UNKNOWN = "?"

# Lua: journal the acks whose keys are KEYS[first..first+m-1] (ack times ARGV[arg..]) on keys
# still in the window, and append them to the history stream KEYS[hist] as one entry.
_ACKS_LUA = f"""
local function journal_acks(hist, first, arg, m)
  if m == 0 then return end
  local lines = {{}}
  for j = 0, m - 1 do
    local key = KEYS[first + j]
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, 'a', ARGV[arg + j])
    end
    lines[#lines + 1] = string.sub(key, {len(KEY_PREFIX) + 1}) .. ' ' .. ARGV[arg + j]
  end
  redis.call('XADD', hist, '*', 'a', table.concat(lines, '\\n'))
end
"""

# Reserve request ids and enqueue the new ones in the same atomic step, after journaling the
# acks of earlier commands (so a repeated id in this very batch already finds its ack).
# KEYS: n journal keys, the broker list, the history stream, then m journal keys of earlier
# acks. ARGV: n, then n command names, n encoded envelopes, n string-escaped envelopes, the
# message frame: prefix, suffix, body head and body tail (the message is prefix + '"' + head +
# escaped envelopes joined by ',' + tail + '"' + suffix, with the new request ids put first:
# hean.celery_wire.IDS_FIELD), then m and m ack times. Returns, per
# key, 1 when new, else its window fields {c, a, r, d}.
_RESERVE = (
    (
        _ACKS_LUA
        + """
local n = tonumber(ARGV[1])
local f = 1 + 3 * n
local hist = KEYS[n + 2]
journal_acks(hist, n + 3, f + 6, tonumber(ARGV[f + 5] or '0'))
local out, fresh, plain, ids = {}, {}, {}, {}
for i = 1, n do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'c', ARGV[1 + i])
    out[i] = 1
    plain[#plain + 1] = ARGV[1 + n + i]
    fresh[#fresh + 1] = ARGV[1 + 2 * n + i]
    ids[#ids + 1] = string.sub(key, PREFIX_LEN + 1)
  else
    out[i] = redis.call('HMGET', key, 'c', 'a', 'r', 'd')
  end
end
if #fresh > 0 then
  redis.call('XADD', hist, '*', 'c', table.concat(plain, '\\n'))
  local body = ARGV[f + 3] .. table.concat(fresh, ',') .. ARGV[f + 4]
  local ids_field = '{"IDS_FIELD": "' .. table.concat(ids, ' ') .. '", '
  local head = ids_field .. string.sub(ARGV[f + 1], 2)
  redis.call('LPUSH', KEYS[n + 1], head .. '"' .. body .. '"' .. ARGV[f + 2])
end
return out
"""
    )
    .replace("PREFIX_LEN", str(len(KEY_PREFIX)))
    .replace("IDS_FIELD", IDS_FIELD)
)

_RECORD_ACKS = _ACKS_LUA + "journal_acks(KEYS[1], 2, 1, #KEYS - 1)\n"

# Record results: KEYS are the commands' journal keys, then the history stream; ARGV their
# results, in the same order. Each goes into its key's `r`, and all of them, one per line,
# into one history entry.
_RECORD_RESULTS = """
local n = #KEYS - 1
for i = 1, n do redis.call('HSET', KEYS[i], 'r', ARGV[i]) end
redis.call('XADD', KEYS[n + 1], '*', 'r', table.concat(ARGV, '\\n'))
return n
"""

# Lua: mark the commands whose journal keys are `keys` (start_commands: KEYS[first..]) as
# started at `now`; returns, per key, its stored result if it already ran, IN_DATABASE if that
# result is in the database already, UNKNOWN if the window does not hold the key, else false
# (now started). Scripts that start commands as part of a bigger step (the engine worker's
# take) include it.
START_LUA = f"""
local function start_keys(keys, now)
  local out = {{}}
  for _, key in ipairs(keys) do
    local got = redis.call('HMGET', key, 'r', 'd')
    if got[1] then
      out[#out + 1] = got[1]
    elseif got[2] then
      out[#out + 1] = '{IN_DATABASE}'
    elseif redis.call('EXISTS', key) == 0 then
      out[#out + 1] = '{UNKNOWN}'
    else
      redis.call('HSET', key, 's', now)
      out[#out + 1] = false
    end
  end
  return out
end
local function start_commands(first, now)
  local keys = {{}}
  for i = first, #KEYS do keys[#keys + 1] = KEYS[i] end
  return start_keys(keys, now)
end
"""

_START = START_LUA + "return start_commands(1, ARGV[1])\n"

# The history writer has the results of KEYS in the database: drop them (and the start time)
# from the window, mark the keys done and let them expire ARGV[1] seconds from now. The key is
# written anew: a result made it a hashtable, which HDEL would keep (~300 bytes instead of ~110).
# The result itself is never read: a 100-order command's is about 15 KB, and reading 500 of them
# into Lua (a chunk of the writer's) held Redis, and every client of it, for up to 6 ms.
_COMPACT = """
local n = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    local got = redis.call('HMGET', key, 'c', 'a')
    redis.call('DEL', key)
    local fields = {'d', '1'}
    if got[1] then fields[#fields + 1] = 'c'; fields[#fields + 1] = got[1] end
    if got[2] then fields[#fields + 1] = 'a'; fields[#fields + 1] = got[2] end
    redis.call('HSET', key, unpack(fields))
    redis.call('EXPIRE', key, ARGV[1])
    n = n + 1
  end
end
return n
"""


def journal_key(request_id: str) -> str:
    return KEY_PREFIX + request_id


@dataclass(frozen=True)
class Reservation:
    """Outcome of reserving a request id: new, or the earlier ack/result of the same id."""

    new: bool
    ack: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


def _decode(raw: bytes | str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def rebuild_ack(request_id: str, command: str | None, ack_time_ms: float | None) -> dict[str, Any] | None:
    """The ack that was sent for an accepted command, from what the window or the database keeps
    of it (its command and ack time); None when its ack time was not journaled."""
    if ack_time_ms is None:
        return None
    return ack_message(request_id, command, True, ack_time_ms)


def decode_started(reply: Sequence[Any]) -> list[dict[str, Any] | str | None]:
    """A START_LUA reply: per command, the result it already had, a marker, or None."""
    out: list[dict[str, Any] | str | None] = []
    for raw in reply:
        if raw is None:
            out.append(None)
            continue
        value = text(raw)
        out.append(value if value in (IN_DATABASE, UNKNOWN) else json.loads(value))
    return out


def resolve_started(
    ids: Sequence[str],
    started: Sequence[dict[str, Any] | str | None],
    history: Callable[[], History | None],
) -> dict[str, dict[str, Any] | None]:
    """Per request id, its earlier result or None (run it): the markers are looked up in the
    database, in one query; `history()` gives it, called only then (the engine worker opens its
    database, and imports SQLAlchemy, only for a request id that left the window). Without a
    database, an unknown id runs (as it did before the window) and a result said to be in the
    database cannot be resent: it counts as ran, with an `unavailable` result rather than
    running twice."""
    outcome: dict[str, dict[str, Any] | None] = {}
    asked: list[str] = []
    for request_id, value in zip(ids, started, strict=True):
        if isinstance(value, str):
            asked.append(request_id)
        else:
            outcome[request_id] = value
    if asked:
        store = history()
        found = store.lookup(asked) if store is not None else {}
        for request_id, value in zip(ids, started, strict=True):
            if not isinstance(value, str):
                continue
            record = found.get(request_id)
            if record is not None and record.result is not None:
                outcome[request_id] = record.result
            elif value == IN_DATABASE:  # the window says it ran; the database must have it
                outcome[request_id] = {
                    "request_id": request_id,
                    "command": record.command if record else None,
                    "success": False,
                    "result": None,
                    "error": {
                        "code": "unavailable",
                        "message": "ran; its result is not readable now",
                        "field": None,
                    },
                    "execution_time_ms": 0.0,
                }
            else:
                outcome[request_id] = None
    return outcome


class CommandJournal:
    """Sync face over the journal (the web process under eventlet and Celery workers).

    `history` (the database) answers for request ids that left the window.
    """

    def __init__(
        self, client: redis.Redis, history: History | None = None, scripts: ConnectionSource | None = None
    ) -> None:
        self._client = client
        self.history = history
        # where the intake's scripts (reserve_and_enqueue, record_acks) get their connection
        self._scripts: ConnectionSource = scripts or client.connection_pool

    def with_own_connection(self) -> CommandJournal:
        """This journal, its intake scripts run on one connection of its own (hean.redis_client.
        OwnConnection: no pool checkout per call; callers take turns on it)."""
        return CommandJournal(self._client, self.history, OwnConnection(self._client.connection_pool))

    @property
    def client(self) -> redis.Redis:
        return self._client

    def load_intake_scripts(self) -> None:
        """Load the intake's scripts (reserve_and_enqueue, record_acks) on their connection, so
        that the first command waits for neither (hean.redis_client.load_scripts)."""
        load_scripts(self._scripts, (_RESERVE, _RECORD_ACKS))

    def reserve_and_enqueue(
        self,
        items: Sequence[tuple[str, str, str]],
        queue_key: str,
        frame: MessageFrame,
        earlier_acks: Sequence[dict[str, Any]] = (),
        durable: Durability = NOT_DURABLE,
    ) -> list[Reservation]:
        """Claim each request id (items: request id, command name, encoded envelope) and push
        one broker message carrying the new ones, atomically, recording them on the history
        stream in the same step.

        Either the reservations and the message both exist, or neither does: a command is never
        reserved without being enqueued, nor enqueued twice. `earlier_acks` (acks already sent
        for earlier commands) are journaled in the same step, before the reservations. With
        `durable`, raises hean.redis_client.NotDurable when the step happened but did not reach
        the disk (or the replicas) in time.
        """
        if not items:
            return []
        for rid, _, _ in items:  # the script writes them into the message unescaped
            if not _REQUEST_ID(rid):
                raise ValueError(f"request_id {rid!r} does not match {REQUEST_ID_PATTERN}")
        keys = [journal_key(rid) for rid, _, _ in items] + [queue_key, HISTORY_STREAM_KEY]
        keys += [journal_key(ack["request_id"]) for ack in earlier_acks]
        args: list[Any] = [len(items), *(name for _, name, _ in items), *(env for _, _, env in items)]
        args += [escape_envelope(env) for _, _, env in items]
        args += [frame.prefix, frame.suffix, frame.body_head, frame.body_tail]
        args += [len(earlier_acks), *(repr(ack["ack_time_ms"]) for ack in earlier_acks)]
        # tried again on a stale connection: a second run finds what a first one reserved, and
        # those commands are settled as reserved and never acked (their ack is then the first)
        reply = run_script(self._scripts, _RESERVE, keys, args, durable, retry_stale=True)
        return [self._reservation(rid, r) for (rid, _, _), r in zip(items, reply, strict=True)]

    def _reservation(self, request_id: str, reply: Any) -> Reservation:
        if isinstance(reply, int):
            return Reservation(new=True)
        command, ack_ms, result, done = (None if v is None else text(v) for v in reply)
        ack = rebuild_ack(request_id, command, float(ack_ms) if ack_ms else None)
        if result is not None:
            return Reservation(new=False, ack=ack, result=json.loads(result))
        if done and self.history is not None:  # the result is in the database now
            record = self.history.lookup([request_id]).get(request_id)
            if record is not None:
                return Reservation(new=False, ack=ack or record.ack, result=record.result)
        return Reservation(new=False, ack=ack)

    def window_ack(self, request_id: str) -> dict[str, Any] | None:
        """The ack the window holds for `request_id` (None: not journaled, or not in the window)."""
        fields = self._client.hmget(journal_key(request_id), "c", "a")
        command, ack_ms = (None if v is None else text(v) for v in fields)
        return rebuild_ack(request_id, command, float(ack_ms) if ack_ms else None)

    def record_acks(self, acks: Sequence[dict[str, Any]]) -> None:
        """Journal acks no batch carried (window and history stream, one round trip)."""
        if not acks:
            return
        keys = [HISTORY_STREAM_KEY, *(journal_key(ack["request_id"]) for ack in acks)]
        ack_times = [repr(a["ack_time_ms"]) for a in acks]
        run_script(self._scripts, _RECORD_ACKS, keys, ack_times, retry_stale=True)  # may run twice

    def start_many(self, request_ids: Sequence[str]) -> list[dict[str, Any] | str | None]:
        """Mark commands started; for those that already ran, their stored result (or a marker,
        see `resolve_started`) instead."""
        if not request_ids:
            return []
        keys = [journal_key(rid) for rid in request_ids]
        reply = run_script(self._client.connection_pool, _START, keys, [time.time()])
        return decode_started(reply)

    @staticmethod
    def record_results(pipe: Any, results: Sequence[dict[str, Any]]) -> None:
        """Queue the results on `pipe` (a pipeline the caller executes with other writes): in
        the window, and as one entry of the history stream. One command for all of them (a
        script called by its text, which Redis caches): each result crosses to Redis once, and
        the client packs one command instead of one per result."""
        if not results:
            return
        keys = [journal_key(result["request_id"]) for result in results]
        # bytes: what redis-py sends, with no str between
        encoded = [fastjson.dumpb(result) for result in results]
        pipe.execute_command("EVAL", _RECORD_RESULTS, len(keys) + 1, *keys, HISTORY_STREAM_KEY, *encoded)

    def compact(self, request_ids: Sequence[str], window_s: int) -> int:
        """The results of `request_ids` are in the database: keep only the compact record in
        the window, for `window_s` seconds more. Returns how many keys were still there."""
        if not request_ids:
            return 0
        keys = [journal_key(rid) for rid in request_ids]
        return int(run_script(self._client.connection_pool, _COMPACT, keys, [window_s]))

    def state(self, request_id: str) -> str | None:
        """Where a request id stands in the window: "reserved", "started", "done" (its result in
        the window or the database) or None (not in the window)."""
        fields = {text(k): text(v) for k, v in self._client.hgetall(journal_key(request_id)).items()}
        if not fields:
            return None
        if "r" in fields or "d" in fields:
            return "done"
        return "started" if "s" in fields else "reserved"

    def get(self, request_id: str) -> dict[str, Any] | None:
        """Everything known about a request id (the window, then the database), or None if it
        was never seen. `envelope` comes from the database only (None until the history writer
        has it)."""
        fields = {text(k): text(v) for k, v in self._client.hgetall(journal_key(request_id)).items()}
        record = self.history.lookup([request_id]).get(request_id) if self.history is not None else None
        if not fields and record is None:
            return None
        command = fields.get("c") or (record.command if record else None)
        ack = rebuild_ack(request_id, command, float(fields["a"]) if "a" in fields else None)
        result = _decode(fields.get("r"))
        return {
            "request_id": request_id,
            "command": command,
            "envelope": record.envelope if record else None,
            "ack": ack or (record.ack if record else None),
            "result": result or (record.result if record else None),
            "started_at": float(fields["s"]) if "s" in fields else None,
            "in_window": bool(fields),
        }
