"""The command journal: one Redis hash per request id, so a command never runs twice.

Key ``hean:cmd:{request_id}`` (kept 24 hours) holds the fields ``envelope`` (written first,
atomically, by the web process: the reservation), ``ack`` (the ack sent to the client),
``started`` and ``result`` (written by the worker). A request id seen again returns the
original ack and result instead of enqueuing anything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

#: How long a request id is remembered.
RETENTION_S = 24 * 3600
KEY_PREFIX = "hean:cmd:"

# Reserve a request id in one round trip: returns {1} when new, else {0, ack, result}.
_RESERVE = """
if redis.call('HSETNX', KEYS[1], 'envelope', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {1}
end
return {0, redis.call('HGET', KEYS[1], 'ack') or false, redis.call('HGET', KEYS[1], 'result') or false}
"""

# Mark a command as started; returns the stored result if it already ran, else false.
_START = """
local result = redis.call('HGET', KEYS[1], 'result')
if result then return result end
redis.call('HSET', KEYS[1], 'started', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return false
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


class CommandJournal:
    """Sync face over the journal (the web process under eventlet and Celery workers)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)
        self._start = client.register_script(_START)

    def reserve(self, request_id: str, envelope_json: str) -> Reservation:
        """Claim `request_id` for the command `envelope_json` (already encoded)."""
        reply = self._reserve(keys=[journal_key(request_id)], args=[envelope_json, RETENTION_S])
        if int(reply[0]) == 1:
            return Reservation(new=True)
        return Reservation(new=False, ack=_decode(reply[1]), result=_decode(reply[2]))

    def release(self, request_id: str) -> None:
        """Forget a reservation whose command was never enqueued (the client may retry)."""
        self._client.delete(journal_key(request_id))

    def record_ack(self, request_id: str, ack: dict[str, Any]) -> None:
        self._client.hset(journal_key(request_id), "ack", json.dumps(ack))

    def start(self, request_id: str) -> dict[str, Any] | None:
        """Mark the command started; returns its result instead if it already ran."""
        return _decode(self._start(keys=[journal_key(request_id)], args=[time.time(), RETENTION_S]))

    def record_result(self, request_id: str, result: dict[str, Any]) -> None:
        self._client.hset(journal_key(request_id), "result", json.dumps(result))

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
