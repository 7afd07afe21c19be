"""The command journal: one Redis hash per request id, so a command never runs twice.

Key ``hean:cmd:{request_id}`` (kept 24 hours) holds the fields ``envelope`` (written first,
atomically, by the web process: the reservation), ``ack`` (the ack sent to the client),
``started`` and ``result`` (written by the worker). A request id seen again returns the
original ack and result instead of enqueuing anything. Every operation takes many request
ids at once, so a batch of commands costs one round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from hean.celery_wire import MessageFrame, escape_envelope
from hean.redis_client import NOT_DURABLE, Durability, run_script

#: How long a request id is remembered.
RETENTION_S = 24 * 3600
KEY_PREFIX = "hean:cmd:"

# Reserve request ids and enqueue the new ones in the same atomic step, after journaling the
# acks of earlier commands (so a repeated id in this very batch already finds its ack).
# KEYS: n journal keys, the broker list to push onto, then m journal keys of earlier acks.
# ARGV: retention, n, then n encoded envelopes, then n string-escaped envelopes and the
# message frame: prefix, suffix, body head and body tail (the message is prefix + '"' + head +
# escaped envelopes joined by ',' + tail + '"' + suffix), then m, then m acks. Returns, per
# key, {1} when new, else {0, ack or false, result or false}.
_RESERVE = """
local n = tonumber(ARGV[2])
local f = 2 + 2 * n
local m = tonumber(ARGV[f + 5] or '0')
for j = 1, m do
  redis.call('HSET', KEYS[n + 1 + j], 'ack', ARGV[f + 5 + j])
end
local out, fresh = {}, {}
for i = 1, n do
  local key = KEYS[i]
  if redis.call('HSETNX', key, 'envelope', ARGV[2 + i]) == 1 then
    redis.call('EXPIRE', key, ARGV[1])
    out[i] = {1}
    fresh[#fresh + 1] = ARGV[2 + n + i]
  else
    out[i] = {0, redis.call('HGET', key, 'ack') or false, redis.call('HGET', key, 'result') or false}
  end
end
if #fresh > 0 then
  local body = ARGV[f + 3] .. table.concat(fresh, ',') .. ARGV[f + 4]
  redis.call('LPUSH', KEYS[n + 1], ARGV[f + 1] .. '"' .. body .. '"' .. ARGV[f + 2])
end
return out
"""

# Lua: mark the commands whose journal keys are KEYS[first..] as started at `now` (kept
# `retention` s); returns, per key, its stored result if it already ran, else false. Scripts
# that start commands as part of a bigger step (the engine worker's take) include it.
START_LUA = """
local function start_commands(first, now, retention)
  local out = {}
  for i = first, #KEYS do
    local key = KEYS[i]
    local result = redis.call('HGET', key, 'result')
    if result then
      out[#out + 1] = result
    else
      redis.call('HSET', key, 'started', now)
      redis.call('EXPIRE', key, retention)
      out[#out + 1] = false
    end
  end
  return out
end
"""

_START = START_LUA + "return start_commands(1, ARGV[1], ARGV[2])\n"


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


def decode_started(reply: Sequence[Any]) -> list[dict[str, Any] | None]:
    """A START_LUA reply: per command, the result it already had, or None."""
    return [_decode(r) for r in reply]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class CommandJournal:
    """Sync face over the journal (the web process under eventlet and Celery workers)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @property
    def client(self) -> redis.Redis:
        return self._client

    def reserve_and_enqueue(
        self,
        items: Sequence[tuple[str, str]],
        queue_key: str,
        frame: MessageFrame,
        earlier_acks: Sequence[dict[str, Any]] = (),
        durable: Durability = NOT_DURABLE,
    ) -> list[Reservation]:
        """Claim each request id and push one broker message carrying the new ones, atomically.

        Either the reservations and the message both exist, or neither does: a command is never
        reserved without being enqueued, nor enqueued twice. `earlier_acks` (acks already sent
        for earlier commands) are journaled in the same step, before the reservations. With
        `durable`, raises hean.redis_client.NotDurable when the step happened but did not reach
        the disk (or the replicas) in time.
        """
        if not items:
            return []
        keys = [journal_key(rid) for rid, _ in items] + [queue_key]
        keys += [journal_key(ack["request_id"]) for ack in earlier_acks]
        args: list[Any] = [RETENTION_S, len(items), *(env for _, env in items)]
        args += [escape_envelope(env) for _, env in items]
        args += [frame.prefix, frame.suffix, frame.body_head, frame.body_tail]
        args += [len(earlier_acks), *(_dumps(ack) for ack in earlier_acks)]
        reply = run_script(self._client.connection_pool, _RESERVE, keys, args, durable)
        return [
            Reservation(new=True)
            if int(r[0]) == 1
            else Reservation(new=False, ack=_decode(r[1]), result=_decode(r[2]))
            for r in reply
        ]

    def record_acks(self, acks: Sequence[dict[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for ack in acks:
            pipe.hset(journal_key(ack["request_id"]), "ack", _dumps(ack))
        pipe.execute()

    def start_many(self, request_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Mark commands started; for those that already ran, their stored result instead."""
        if not request_ids:
            return []
        keys = [journal_key(rid) for rid in request_ids]
        reply = run_script(self._client.connection_pool, _START, keys, [time.time(), RETENTION_S])
        return decode_started(reply)

    @staticmethod
    def record_results(pipe: Any, results: Sequence[dict[str, Any]]) -> None:
        """Queue the results on `pipe` (a pipeline the caller executes with other writes)."""
        for result in results:
            pipe.hset(journal_key(result["request_id"]), "result", _dumps(result))

    def get(self, request_id: str) -> dict[str, Any] | None:
        """Everything known about a request id, or None if it was never seen (or expired)."""
        fields = self._client.hgetall(journal_key(request_id))
        if not fields:
            return None
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return {
            "request_id": request_id,
            "envelope": _decode(decoded.get("envelope")),
            "ack": _decode(decoded.get("ack")),
            "result": _decode(decoded.get("result")),
            "started_at": float(decoded["started"]) if "started" in decoded else None,
        }
