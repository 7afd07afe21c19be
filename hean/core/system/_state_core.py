"""Core of the state bus, shared by both faces: key schema, codec, Lua scripts, subscription logic.

The two faces of :mod:`hean.core.system.redis_state` are built on this module the way
python-socketio builds ``Server`` and ``AsyncServer`` on one base:
:mod:`~hean.core.system._state_async` (``redis.asyncio``) and
:mod:`~hean.core.system._state_sync` (``redis.Redis``) hold only the I/O; everything that
does none (names, validation, encoding, the scripts, reading replies and messages, which
subscriber gets what) lives here once.

Storage
    Each state key is ONE Redis hash ``hean:state:{<namespace>}:<key>`` with the fields
    ``value`` (compact JSON text, absent after a delete), ``version`` (integer, +1 on every
    change, never reset: a delete keeps the hash as a tombstone so a recreated key continues
    from the next version) and ``ts`` (Redis server time of the change, seconds as
    ``"<sec>.<usec>"``). The ``{<namespace>}`` braces are a cluster hash tag, so one
    namespace lives in one slot and a batch within a namespace stays atomic on a cluster.

Changes
    Every change goes through one Lua script (:data:`APPLY_SCRIPT`, loaded once from
    ``lua/state_apply.lua`` in this package) that validates all operations of a call first,
    then writes value+version+ts and PUBLISHes the update on
    ``hean:state-ch:<namespace>:<key>`` in the same atomic step. The WATCH/MULTI/EXEC path
    runs that same script inside its MULTI block.

Messages
    The published payload is JSON ``{"namespace", "key", "version", "timestamp", "deleted",
    "value"}``; :class:`StateUpdate` is its typed form.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import random
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hean import metrics
from hean.redis_client import script_sha

log = logging.getLogger("hean.core.system.redis_state")

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
            f"state {namespace}:{key}: expected version {expected}, found {actual}; nothing was written"
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


class SubscriptionEndedError(StateError):
    """A subscription queue's end of stream: it was unsubscribed (or its manager closed) and
    every item it had received has been taken. A pending ``get()`` raises it too."""

    def __init__(self, namespace: str, key: str) -> None:
        super().__init__(f"subscription to {namespace}:{key} ended")
        self.namespace, self.key = namespace, key


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
        cls,
        key: str,
        value: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
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
        cls,
        key: str,
        increments: Mapping[str, int | float],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("incr", key, namespace, dict(increments), expected_version)

    @classmethod
    def merge(
        cls,
        key: str,
        patch: Mapping[str, Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("merge", key, namespace, dict(patch), expected_version)

    @classmethod
    def append(
        cls,
        key: str,
        items: Sequence[Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        field: str | None = None,
        max_length: int | None = None,
        expected_version: int | None = None,
    ) -> StateOp:
        return cls("append", key, namespace, list(items), expected_version, field, max_length)


# --------------------------------------------------------------------------- names


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise StateValidationError(f"invalid namespace {namespace!r}: must match {NAMESPACE_RE.pattern}")
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
        data = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
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


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script shipped in ``hean/core/system/lua/``, with the SHA1 Redis knows it by."""

    name: str
    source: str
    sha: str


def load_script(name: str) -> LuaScript:
    """Read ``lua/<name>.lua`` from this package (shipped in the wheel, read in place when editable)."""
    source = resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")
    return LuaScript(name, source, script_sha(source))


#: The one write path (``lua/state_apply.lua``; its header says what KEYS and ARGV hold). Both
#: faces run it with their `run_script`; the WATCH/MULTI/EXEC path queues it inside MULTI.
APPLY_SCRIPT = load_script("state_apply")

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
                raise StateValidationError(f"expected_version must be an int, got {op.expected_version!r}")
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
            parts = [f"{json.dumps(k, ensure_ascii=False)}:{_encode_number(v)}" for k, v in op.value.items()]
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
                    raise StateValidationError(f"max_length must be an int >= 1, got {op.max_length!r}")
                z = op.max_length
        else:
            raise StateValidationError(f"unknown operation kind {op.kind!r}")
        args += [
            op.kind,
            state_channel(op.namespace, op.key),
            _message_header(op.namespace, op.key),
            expected,
            x,
            y,
            z,
        ]
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
        raise VersionMismatchError(op.namespace, op.key, int(op.expected_version or 0), int(reply[2]))
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
        body["namespace"],
        body["key"],
        body["value"],
        int(body["version"]),
        float(body["timestamp"]),
        bool(body.get("deleted", False)),
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
    on_end: Callable[[], None] | None = field(default=None, repr=False)  # when unsubscribed

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


# --------------------------------------------------------------------------- manager core

#: What a lost or timed-out connection raises (redis-py's own errors, or the socket's).
NET_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
#: Items a subscription queue holds before it drops the oldest (the newest is always kept).
DEFAULT_QUEUE_SIZE = 10_000
#: Attempts of a read, with backoff in between, before it raises StateUnavailableError.
READ_ATTEMPTS = 4


class _RequestLog:
    """Subscribe/unsubscribe requests for the listener, which alone touches the pub/sub socket."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[str, Sink]] = collections.deque()

    def push(self, kind: str, sink: Sink) -> None:
        self._items.append((kind, sink))

    def drain(self) -> Iterator[tuple[str, Sink]]:
        while True:
            try:
                yield self._items.popleft()
            except IndexError:
                return

    def clear(self) -> None:
        self._items.clear()


PoolT = TypeVar("PoolT")
ClientT = TypeVar("ClientT")


class StateManagerCore(Generic[PoolT, ClientT]):
    """Everything the two faces share that does no I/O (python-socketio's ``BaseServer``).

    A face hands in its redis-py classes (pool, client, retry); the options of its two pools
    are set here, once for both.
    """

    def __init__(
        self,
        url: str,
        retry_policy: RetryPolicy | None,
        max_connections: int,
        pool_class: Any,
        client_class: Callable[..., ClientT],
        retry_class: Any,
    ) -> None:
        self.url = url
        self.retry_policy = retry_policy or RetryPolicy()
        self.stats = ManagerStats()
        # No automatic command retries: a write re-sent after a dropped reply could apply twice.
        self._pool: PoolT = pool_class.from_url(
            url, max_connections=max_connections, timeout=20, retry=retry_class(NoBackoff(), 0)
        )
        self._redis = client_class(connection_pool=self._pool)
        # Pub/sub must never time out on an idle channel (redis-py 8 defaults to 5 s).
        self._sub_pool: PoolT = pool_class.from_url(
            url,
            max_connections=2,
            timeout=20,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            retry=retry_class(NoBackoff(), 0),
        )
        self._sub_redis = client_class(connection_pool=self._sub_pool)
        self._hub = SubscriptionHub()
        self._requests = _RequestLog()
        self._control = f"{CONTROL_PREFIX}{uuid.uuid4().hex}"
        self._subscribed: set[str] = set()
        self._confirmed: set[str] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- listener bookkeeping (called only from the listener)

    def _reset_connection_state(self) -> list[str]:
        """Forget the old connection's subscriptions; returns the channels to subscribe."""
        self._requests.clear()
        self._hub.mark_stale()
        channels = self._hub.channels()
        self._subscribed = set(channels)
        self._confirmed = set()
        return [self._control, *channels]

    def _drain_requests(self) -> tuple[list[str], list[str], list[Sink]]:
        subscribe: list[str] = []
        unsubscribe: list[str] = []
        snapshot: list[Sink] = []
        for kind, sink in self._requests.drain():
            channel = sink.channel
            if kind == "add":
                if channel not in self._subscribed:
                    self._subscribed.add(channel)
                    subscribe.append(channel)
                    if channel in unsubscribe:
                        unsubscribe.remove(channel)
                elif channel in self._confirmed:
                    snapshot.append(sink)
            elif not self._hub.for_channel(channel) and channel in self._subscribed:
                self._subscribed.discard(channel)
                self._confirmed.discard(channel)
                if channel in subscribe:
                    subscribe.remove(channel)
                else:
                    unsubscribe.append(channel)
        return subscribe, unsubscribe, snapshot

    def _route(self, message: Mapping[str, Any] | None) -> list[Sink]:
        """Deliver an in-order message; returns the sinks that must re-read the stored value."""
        if not message:
            return []
        kind = message.get("type")
        channel = channel_text(message.get("channel", b""))
        if channel == self._control:
            return []
        if kind == "subscribe":
            if channel in self._subscribed:
                self._confirmed.add(channel)
                return self._hub.for_channel(channel)
            return []
        if kind != "message":
            return []
        sinks = self._hub.for_channel(channel)
        if not sinks:
            return []
        update = parse_message(message["data"])
        resync = []
        for sink in sinks:
            if sink.needs_resync(update):
                resync.append(sink)
            else:
                sink.offer(update, from_snapshot=False)
        return resync

    def _deliver_snapshots(self, sinks: Sequence[Sink], updates: Sequence[StateUpdate]) -> None:
        by_channel = {state_channel(u.namespace, u.key): u for u in updates}
        for sink in sinks:
            update = by_channel.get(sink.channel)
            if update is not None and self._hub_has(sink):
                sink.offer(update, from_snapshot=True)
        self.stats.resyncs += len(sinks)

    def _hub_has(self, sink: Sink) -> bool:
        return sink in self._hub.sinks.get(sink.channel, ())

    @staticmethod
    def _snapshot_targets(sinks: Sequence[Sink]) -> list[tuple[str, str]]:
        seen: dict[str, tuple[str, str]] = {}
        for sink in sinks:
            seen.setdefault(sink.channel, (sink.namespace, sink.key))
        return list(seen.values())

    @staticmethod
    def _log_listener_error(exc: BaseException, attempt: int, delay: float) -> None:
        log.warning(
            "event=state_listener_reconnect attempt=%d delay_s=%.3f error=%s",
            attempt,
            delay,
            type(exc).__name__,
        )

    @staticmethod
    def _unavailable(exc: BaseException, what: str) -> StateUnavailableError:
        return StateUnavailableError(f"Redis unavailable during {what}: {type(exc).__name__}: {exc}")

    def _lost_race(self, namespace: str, key: str, conflicts: int, limit: int) -> float:
        """Count a lost WATCH race: the pause before the next attempt, or StateConflictError."""
        self.stats.watch_conflicts += 1
        if conflicts > limit:
            raise StateConflictError(namespace, key, conflicts) from None
        return self.retry_policy.delay(conflicts)

    def _write_error(self, call: PreparedCall, exc: Exception) -> StateError:
        """The state-bus error for a failed run of the apply script (`exc` from `run_script`)."""
        if isinstance(exc, ResponseError):
            op = call.ops[0]
            return StateOperationError(op.namespace, op.key, f"server rejected the operation: {exc}")
        return self._unavailable(exc, "write")

    def _written(self, reply: Any) -> list[Any]:
        self.stats.script_updates += 1
        metrics.STATE_UPDATES.inc()
        return list(reply)

    # ---- subscriptions (the faces add them, wake their listener and wait for the first item)

    def _queue_sink(self, queue: SubscriptionStream, on_first: Callable[[], None]) -> Sink:
        """The sink that fills `queue` (an item per version) and ends its stream when removed."""
        sink = Sink(
            queue.namespace,
            queue.key,
            state_channel(queue.namespace, queue.key),
            deliver=lambda update: queue._put_latest(update.item),
            on_first=on_first,
            on_end=queue._end,
        )
        queue._sink = sink
        return sink

    @staticmethod
    def _watch_sink(
        namespace: str,
        key: str,
        callback: Callable[[StateUpdate], None],
        on_first: Callable[[], None],
    ) -> Sink:
        """The sink that calls `callback` (its exceptions logged, never raised) per version."""
        return Sink(
            namespace, key, state_channel(namespace, key), deliver=_guarded(callback), on_first=on_first
        )

    def _targets(self, target: str | SubscriptionStream | StateWatch, namespace: str) -> list[Sink]:
        """The sinks `unsubscribe_state(target, namespace)` stops."""
        if isinstance(target, StateWatch):
            return [target._sink]
        if isinstance(target, SubscriptionStream):
            return [] if target._sink is None else [target._sink]
        return self._hub.for_channel(state_channel(namespace, target))

    def _drop_sink(self, sink: Sink) -> None:
        """Stop delivering to `sink` and end its stream; the listener unsubscribes once woken."""
        self._hub.remove(sink)
        self._requests.push("remove", sink)
        if sink.on_end is not None:
            sink.on_end()

    def _end_streams(self) -> None:
        """At close: end every subscription's stream, so no reader waits forever."""
        for sink in self._hub.all():
            if sink.on_end is not None:
                sink.on_end()

    def _remove_sink(self, sink: Sink) -> None:
        """Drop `sink` and wake the listener, which unsubscribes its channel if it was the last."""
        raise NotImplementedError


class StateWatch:
    """Handle of a callback subscription; `cancel()` (or unsubscribe_state) stops it.

    In both faces `cancel()` also wakes the manager's listener, which unsubscribes from the
    key's channel at once if this was its last subscriber.
    """

    def __init__(self, manager: StateManagerCore[Any, Any], sink: Sink) -> None:
        self._manager = manager
        self._sink = sink
        self.namespace, self.key = sink.namespace, sink.key

    def cancel(self) -> None:
        self._manager._remove_sink(self._sink)


class SubscriptionStream:
    """What both faces' subscription queues add to the stdlib queue they extend.

    Items arrive through :func:`put_latest` (the oldest is dropped when the queue is full);
    once the subscription ends, ``get()`` returns what is left, then raises
    :class:`SubscriptionEndedError`.
    """

    namespace: str
    key: str
    #: Items dropped because the queue was full.
    dropped: int
    #: True once the subscription ended (no item arrives after that).
    ended: bool

    def _init_stream(self, namespace: str, key: str) -> None:
        self.namespace, self.key = namespace, key
        self.dropped = 0
        self.ended = False
        self._sink: Sink | None = None

    def _end_of_stream(self) -> SubscriptionEndedError:
        return SubscriptionEndedError(self.namespace, self.key)

    def _put_latest(self, item: StateItem) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError


class _NowaitQueue(Protocol):
    def put_nowait(self, item: StateItem) -> None: ...

    def get_nowait(self) -> StateItem: ...


def put_latest(queue: _NowaitQueue, item: StateItem, full: type[Exception], empty: type[Exception]) -> int:
    """Put `item`, first dropping the oldest items while `queue` is full; returns how many."""
    dropped = 0
    while True:
        try:
            queue.put_nowait(item)
            return dropped
        except full:
            with contextlib.suppress(empty):
                queue.get_nowait()
                dropped += 1


def _guarded(callback: Callable[[StateUpdate], None]) -> Callable[[StateUpdate], None]:
    """A callback that logs its own exceptions instead of killing the listener."""

    def call(update: StateUpdate) -> None:
        try:
            callback(update)
        except Exception:
            log.exception(
                "event=state_callback_error namespace=%s key=%s version=%d",
                update.namespace,
                update.key,
                update.version,
            )

    return call


def resolve_url(url: str | None) -> str:
    """`url`, or the Redis URL of the settings (``REDIS_URL``, else the private server)."""
    if url:
        return url
    from hean.config import get_settings

    return get_settings().effective_redis_url()
