"""Versioned shared state over Redis: one atomic write path, pub/sub updates, two faces.

The original docs' API works as written::

    from hean.core.system.redis_state import get_redis_state_manager
    manager = await get_redis_state_manager()
    new_value, version = await manager.update_state_atomic(
        "trading_state", lambda cur: {"orders": (cur or {}).get("orders", 0) + 1})
    queue = await manager.subscribe_state("trading_state")
    value, version, timestamp = await queue.get()

:class:`RedisStateManager` is the asyncio face (``redis.asyncio``);
:class:`SyncRedisStateManager` is the blocking face for Celery tasks and eventlet handlers
(``redis.Redis``; under ``eventlet.monkey_patch()`` its listener thread is a greenlet).
Both share the key schema, codec, Lua script and subscription logic of
:mod:`hean.core.system._state_schema`, and differ only in I/O.

Semantics (both faces)
    * Every key is one hash ``hean:state:{<namespace>}:<key>``; value, version and
      timestamp change together, and every change is published on
      ``hean:state-ch:<namespace>:<key>`` in the same atomic step.
    * ``version`` starts at 1 and grows by exactly 1 per change, also across deletes (a
      deleted key keeps a tombstone with its version). ``timestamp`` is Redis server time.
    * ``update_state_atomic`` runs any Python function under WATCH/MULTI/EXEC with bounded,
      jittered retries (:class:`StateConflictError` when exhausted). ``set_state`` with
      ``expected_version``, ``increment_state``, ``merge_state``, ``append_state`` and
      ``batch_update`` run as one Lua script and never retry.
    * Values are JSON (dicts with str keys, lists/tuples, str, int, finite float, bool,
      None), at most :data:`MAX_VALUE_BYTES` encoded. Names must match :data:`NAMESPACE_RE`
      and :data:`KEY_RE`. Bad input raises :class:`StateValidationError`; nothing is written.
    * Writes are never retried automatically after a connection error: they raise
      :class:`StateUnavailableError` (outcome unknown). Reads retry with backoff.
    * A subscription's first item is the current value (``(None, 0, 0.0)`` if the key was
      never written). It then gets every version in order; on a gap (missed messages,
      reconnect after a Redis restart) it re-reads the stored value, so its last item is
      always the newest version. Items only move forward, except after a Redis restart
      that lost writes, when the subscriber follows the server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import queue as queue_module
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from hean.core.system._state_schema import (
    APPLY_SCRIPT,
    APPLY_SHA,
    CHANNEL_PATTERN,
    CHANNEL_PREFIX,
    CONTROL_PREFIX,
    DEFAULT_NAMESPACE,
    HASH_FIELDS,
    KEY_PREFIX,
    KEY_RE,
    MAX_VALUE_BYTES,
    NAMESPACE_RE,
    RECONNECT_POLICY,
    ManagerStats,
    PreparedCall,
    RetryPolicy,
    Sink,
    StateConflictError,
    StateError,
    StateItem,
    StateOp,
    StateOperationError,
    StateUnavailableError,
    StateUpdate,
    StateValidationError,
    SubscriptionHub,
    VersionMismatchError,
    channel_text,
    decode_value,
    deleted_flags,
    parse_hash,
    parse_message,
    parse_reply,
    prepare,
    state_channel,
    state_key,
)
from hean.redis_client import run_script

__all__ = [
    "CHANNEL_PATTERN",
    "CHANNEL_PREFIX",
    "DEFAULT_NAMESPACE",
    "KEY_PREFIX",
    "KEY_RE",
    "MAX_VALUE_BYTES",
    "NAMESPACE_RE",
    "ManagerStats",
    "RedisStateManager",
    "RetryPolicy",
    "StateConflictError",
    "StateError",
    "StateItem",
    "StateOp",
    "StateOperationError",
    "StateQueue",
    "StateUnavailableError",
    "StateUpdate",
    "StateValidationError",
    "StateWatch",
    "SyncRedisStateManager",
    "SyncStateQueue",
    "VersionMismatchError",
    "close_state_managers",
    "get_redis_state_manager",
    "get_sync_state_manager",
    "state_channel",
    "state_key",
]

log = logging.getLogger(__name__)

_NET_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
#: Items a subscription queue holds before it drops the oldest (the newest is always kept).
DEFAULT_QUEUE_SIZE = 10_000
_READ_ATTEMPTS = 4


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


class _StateManagerCore:
    """Everything the two faces share that does no I/O."""

    def __init__(self, url: str, retry_policy: RetryPolicy | None) -> None:
        self.url = url
        self.retry_policy = retry_policy or RetryPolicy()
        self.stats = ManagerStats()
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
            attempt, delay, type(exc).__name__,
        )

    @staticmethod
    def _unavailable(exc: BaseException, what: str) -> StateUnavailableError:
        return StateUnavailableError(
            f"Redis unavailable during {what}: {type(exc).__name__}: {exc}"
        )

    @staticmethod
    def _script_error(call: PreparedCall, exc: ResponseError) -> StateError:
        op = call.ops[0]
        return StateOperationError(op.namespace, op.key, f"server rejected the operation: {exc}")


# =========================================================================== async face


class StateQueue(asyncio.Queue):  # type: ignore[type-arg]
    """asyncio queue of :class:`StateItem` for one key; when full, the oldest item is dropped."""

    def __init__(self, namespace: str, key: str, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        super().__init__(maxsize)
        self.namespace = namespace
        self.key = key
        self.dropped = 0
        self._sink: Sink | None = None

    def _put_latest(self, item: StateItem) -> None:
        while True:
            try:
                self.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.get_nowait()
                    self.dropped += 1


class StateWatch:
    """Handle of a callback subscription; `cancel()` (or unsubscribe_state) stops it."""

    def __init__(self, manager: RedisStateManager | SyncRedisStateManager, sink: Sink) -> None:
        self._manager = manager
        self._sink = sink
        self.namespace, self.key = sink.namespace, sink.key

    def cancel(self) -> None:
        self._manager._remove_sink(self._sink)


class RedisStateManager(_StateManagerCore):
    """asyncio face of the state bus; get the shared one with :func:`get_redis_state_manager`."""

    def __init__(
        self, url: str, *, max_connections: int = 64, retry_policy: RetryPolicy | None = None
    ) -> None:
        super().__init__(url, retry_policy)
        # No automatic command retries: a write re-sent after a dropped reply could apply twice.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=20, retry=AsyncRetry(NoBackoff(), 0)
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        # Pub/sub must never time out on an idle channel (redis-py 8 defaults to 5 s).
        self._sub_pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=20, socket_timeout=None, socket_keepalive=True,
            health_check_interval=30, retry=AsyncRetry(NoBackoff(), 0),
        )
        self._sub_redis = aioredis.Redis(connection_pool=self._sub_pool)
        self._listener: asyncio.Task[None] | None = None

    # ---- reads

    async def get_state_versioned(self, key: str, namespace: str = DEFAULT_NAMESPACE) -> StateItem:
        """Value, version and timestamp of `key` (``(None, 0, 0.0)`` if never written)."""
        return (await self._read(namespace, key)).item

    async def get_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, default: Any = None
    ) -> Any:
        """Current value of `key`, or `default` if it does not exist."""
        update = await self._read(namespace, key)
        return default if update.value is None else update.value

    async def _read(self, namespace: str, key: str) -> StateUpdate:
        name = state_key(namespace, key)
        for attempt in range(_READ_ATTEMPTS):
            try:
                raw = await self._redis.hmget(name, *HASH_FIELDS)
                return parse_hash(namespace, key, raw)
            except _NET_ERRORS as exc:
                if attempt == _READ_ATTEMPTS - 1:
                    raise self._unavailable(exc, "read") from exc
                await asyncio.sleep(RECONNECT_POLICY.delay(attempt))
        raise AssertionError("unreachable")

    # ---- Lua writes

    async def set_state(
        self, key: str, value: Any, namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Store `value`; with `expected_version`, only if the key is at that version (CAS)."""
        return (await self.batch_update([StateOp.set(key, value, namespace,
                                                      expected_version=expected_version)]))[0]

    async def compare_and_set(
        self, key: str, value: Any, expected_version: int, namespace: str = DEFAULT_NAMESPACE
    ) -> StateItem:
        """Store `value` only if `key` is at `expected_version` (0: never written)."""
        return await self.set_state(key, value, namespace, expected_version=expected_version)

    async def delete_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *, expected_version: int | None = None
    ) -> bool:
        """Delete `key` (publishes value None, bumps the version); False if it had no value."""
        call = prepare([StateOp.delete(key, namespace, expected_version=expected_version)])
        reply = await self._call(call)
        parse_reply(call, reply)
        return deleted_flags(reply)[0]

    async def increment_state(
        self, key: str, increments: Mapping[str, int | float], namespace: str = DEFAULT_NAMESPACE,
        *, expected_version: int | None = None,
    ) -> StateItem:
        """Add numbers to top-level fields of a dict value, server-side (missing fields: 0)."""
        return (await self.batch_update([StateOp.increment(
            key, increments, namespace, expected_version=expected_version)]))[0]

    async def merge_state(
        self, key: str, patch: Mapping[str, Any], namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Set top-level fields of a dict value from `patch` (shallow merge), server-side."""
        return (await self.batch_update([StateOp.merge(
            key, patch, namespace, expected_version=expected_version)]))[0]

    async def append_state(
        self, key: str, items: Sequence[Any], namespace: str = DEFAULT_NAMESPACE, *,
        field: str | None = None, max_length: int | None = None,
        expected_version: int | None = None,
    ) -> StateItem:
        """Append to a list value (or to list `field` of a dict), keeping the last `max_length`."""
        return (await self.batch_update([StateOp.append(
            key, items, namespace, field=field, max_length=max_length,
            expected_version=expected_version)]))[0]

    async def batch_update(self, ops: Sequence[StateOp]) -> list[StateItem]:
        """Apply `ops` atomically in one round trip: all of them, or none (raises)."""
        call = prepare(ops)
        return parse_reply(call, await self._call(call))

    async def _call(self, call: PreparedCall) -> list[Any]:
        try:
            try:
                reply = await self._redis.evalsha(APPLY_SHA, len(call.keys), *call.keys, *call.args)
            except NoScriptError:
                await self._redis.script_load(APPLY_SCRIPT)
                reply = await self._redis.evalsha(APPLY_SHA, len(call.keys), *call.keys, *call.args)
        except ResponseError as exc:
            raise self._script_error(call, exc) from exc
        except _NET_ERRORS as exc:
            raise self._unavailable(exc, "write") from exc
        self.stats.script_updates += 1
        return list(reply)

    # ---- WATCH/MULTI/EXEC

    async def update_state_atomic(
        self, key: str, update_fn: Callable[[Any], Any | Awaitable[Any]],
        namespace: str = DEFAULT_NAMESPACE, *, max_retries: int | None = None,
    ) -> tuple[Any, int]:
        """Apply ``update_fn(current_value)`` atomically; returns ``(new_value, version)``.

        `update_fn` may run several times (once per attempt) and may be async. Raises
        :class:`StateConflictError` after `max_retries` lost races.
        """
        name = state_key(namespace, key)
        limit = self.retry_policy.max_retries if max_retries is None else max_retries
        conflicts = 0
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(name)
                    raw_value, raw_version = await pipe.hmget(name, "value", "version")
                    new_value = update_fn(decode_value(raw_value))
                    if inspect.isawaitable(new_value):
                        new_value = await new_value
                    call = prepare([StateOp.set(key, new_value, namespace,
                                                expected_version=int(raw_version or 0))])
                    pipe.multi()
                    pipe.evalsha(APPLY_SHA, 1, *call.keys, *call.args)
                    reply = (await pipe.execute())[0]
                item = parse_reply(call, reply)[0]
            except NoScriptError:
                await self._redis.script_load(APPLY_SCRIPT)
                continue
            except (WatchError, VersionMismatchError):
                conflicts += 1
                self.stats.watch_conflicts += 1
                if conflicts > limit:
                    raise StateConflictError(namespace, key, conflicts) from None
                await asyncio.sleep(self.retry_policy.delay(conflicts))
                continue
            except _NET_ERRORS as exc:
                raise self._unavailable(exc, "update_state_atomic") from exc
            self.stats.watch_updates += 1
            return item.value, item.version

    # ---- subscriptions

    async def subscribe_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *,
        maxsize: int = DEFAULT_QUEUE_SIZE, timeout: float = 10.0,
    ) -> StateQueue:
        """Queue of ``(value, version, timestamp)``; the first item is the current value."""
        queue = StateQueue(namespace, key, maxsize)
        ready = asyncio.Event()
        sink = Sink(namespace, key, state_channel(namespace, key),
                    deliver=lambda update: queue._put_latest(update.item), on_first=ready.set)
        queue._sink = sink
        await self._add_sink(sink, ready, timeout)
        return queue

    async def watch_state(
        self, key: str, callback: Callable[[StateUpdate], None],
        namespace: str = DEFAULT_NAMESPACE, *, timeout: float = 10.0,
    ) -> StateWatch:
        """Call `callback(update)` (in the listener task) now and on every change of `key`."""
        ready = asyncio.Event()
        sink = Sink(namespace, key, state_channel(namespace, key),
                    deliver=_guarded(callback), on_first=ready.set)
        await self._add_sink(sink, ready, timeout)
        return StateWatch(self, sink)

    async def unsubscribe_state(
        self, target: str | StateQueue | StateWatch, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Stop one queue/watch, or every subscription of this manager to key `target`."""
        if isinstance(target, StateWatch):
            target.cancel()
        elif isinstance(target, StateQueue):
            if target._sink is not None:
                self._remove_sink(target._sink)
        else:
            for sink in self._hub.for_channel(state_channel(namespace, target)):
                self._remove_sink(sink)
        await self._wake()

    async def _add_sink(self, sink: Sink, ready: asyncio.Event, timeout: float) -> None:
        if self._closed:
            raise StateError("state manager is closed")
        self._hub.add(sink)
        self._requests.push("add", sink)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="hean-state-listener")
        await self._wake()
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            self._remove_sink(sink)
            raise StateUnavailableError(
                f"subscription to {sink.namespace}:{sink.key} not ready within {timeout} s"
            ) from None

    def _remove_sink(self, sink: Sink) -> None:
        self._hub.remove(sink)
        self._requests.push("remove", sink)

    async def _wake(self) -> None:
        with contextlib.suppress(*_NET_ERRORS):
            await self._redis.publish(self._control, b"wake")

    async def _listen(self) -> None:
        attempt = 0
        while not self._closed:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.subscribe(*self._reset_connection_state())
                while True:
                    message = await pubsub.get_message(timeout=None)
                    attempt = 0
                    subscribe, unsubscribe, targets = self._drain_requests()
                    if subscribe:
                        await pubsub.subscribe(*subscribe)
                    if unsubscribe:
                        await pubsub.unsubscribe(*unsubscribe)
                    targets += self._route(message)
                    if targets:
                        await self._resync(targets)
            except asyncio.CancelledError:
                raise
            except (*_NET_ERRORS, StateUnavailableError) as exc:
                attempt += 1
                self.stats.reconnects += 1
                delay = RECONNECT_POLICY.delay(attempt) + 0.01
                self._log_listener_error(exc, attempt, delay)
                await asyncio.sleep(delay)
            except Exception:
                log.exception("event=state_listener_error")
                await asyncio.sleep(RECONNECT_POLICY.cap)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _resync(self, sinks: Sequence[Sink]) -> None:
        targets = self._snapshot_targets(sinks)
        async with self._redis.pipeline(transaction=False) as pipe:
            for namespace, key in targets:
                pipe.hmget(state_key(namespace, key), *HASH_FIELDS)
            raws = await pipe.execute()
        self._deliver_snapshots(
            sinks, [parse_hash(ns, k, raw) for (ns, k), raw in zip(targets, raws, strict=True)])

    # ---- lifecycle

    async def aclose(self) -> None:
        """Stop the listener and close every connection."""
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        await self._redis.aclose()
        await self._pool.disconnect()
        await self._sub_redis.aclose()
        await self._sub_pool.disconnect()
        _forget_async(self)

    async def __aenter__(self) -> RedisStateManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# =========================================================================== sync face


class SyncStateQueue(queue_module.Queue):  # type: ignore[type-arg]
    """Blocking queue of :class:`StateItem` for one key; iterate it or call ``get()``.

    Under eventlet's monkey patching ``queue.Queue`` is green, so ``get()`` yields to the hub.
    When full, the oldest item is dropped.
    """

    def __init__(self, namespace: str, key: str, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        super().__init__(maxsize)
        self.namespace = namespace
        self.key = key
        self.dropped = 0
        self._sink: Sink | None = None

    def _put_latest(self, item: StateItem) -> None:
        while True:
            try:
                self.put_nowait(item)
                return
            except queue_module.Full:
                with contextlib.suppress(queue_module.Empty):
                    self.get_nowait()
                    self.dropped += 1

    def __iter__(self) -> Iterator[StateItem]:
        while True:
            yield self.get()


class SyncRedisStateManager(_StateManagerCore):
    """Blocking face of the state bus for Celery tasks and eventlet handlers.

    Thread-safe. Subscriptions share one pub/sub connection read by one listener thread
    (a greenlet under eventlet), which calls watch callbacks and fills queues.
    """

    def __init__(
        self, url: str, *, max_connections: int = 64, retry_policy: RetryPolicy | None = None
    ) -> None:
        super().__init__(url, retry_policy)
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=20, retry=Retry(NoBackoff(), 0)
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        self._sub_pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=20, socket_timeout=None, socket_keepalive=True,
            health_check_interval=30, retry=Retry(NoBackoff(), 0),
        )
        self._sub_redis = redis.Redis(connection_pool=self._sub_pool)
        self._lock = threading.RLock()
        self._listener: threading.Thread | None = None

    def get_state_versioned(self, key: str, namespace: str = DEFAULT_NAMESPACE) -> StateItem:
        """Value, version and timestamp of `key` (``(None, 0, 0.0)`` if never written)."""
        return self._read(namespace, key).item

    def get_state(self, key: str, namespace: str = DEFAULT_NAMESPACE, default: Any = None) -> Any:
        """Current value of `key`, or `default` if it does not exist."""
        update = self._read(namespace, key)
        return default if update.value is None else update.value

    def _read(self, namespace: str, key: str) -> StateUpdate:
        name = state_key(namespace, key)
        for attempt in range(_READ_ATTEMPTS):
            try:
                return parse_hash(namespace, key, self._redis.hmget(name, *HASH_FIELDS))
            except _NET_ERRORS as exc:
                if attempt == _READ_ATTEMPTS - 1:
                    raise self._unavailable(exc, "read") from exc
                time.sleep(RECONNECT_POLICY.delay(attempt))
        raise AssertionError("unreachable")

    def set_state(
        self, key: str, value: Any, namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Store `value`; with `expected_version`, only if the key is at that version (CAS)."""
        return self.batch_update([StateOp.set(key, value, namespace,
                                              expected_version=expected_version)])[0]

    def compare_and_set(
        self, key: str, value: Any, expected_version: int, namespace: str = DEFAULT_NAMESPACE
    ) -> StateItem:
        """Store `value` only if `key` is at `expected_version` (0: never written)."""
        return self.set_state(key, value, namespace, expected_version=expected_version)

    def delete_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *, expected_version: int | None = None
    ) -> bool:
        """Delete `key` (publishes value None, bumps the version); False if it had no value."""
        call = prepare([StateOp.delete(key, namespace, expected_version=expected_version)])
        reply = self._call(call)
        parse_reply(call, reply)
        return deleted_flags(reply)[0]

    def increment_state(
        self, key: str, increments: Mapping[str, int | float], namespace: str = DEFAULT_NAMESPACE,
        *, expected_version: int | None = None,
    ) -> StateItem:
        """Add numbers to top-level fields of a dict value, server-side (missing fields: 0)."""
        return self.batch_update([StateOp.increment(
            key, increments, namespace, expected_version=expected_version)])[0]

    def merge_state(
        self, key: str, patch: Mapping[str, Any], namespace: str = DEFAULT_NAMESPACE, *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Set top-level fields of a dict value from `patch` (shallow merge), server-side."""
        return self.batch_update([StateOp.merge(
            key, patch, namespace, expected_version=expected_version)])[0]

    def append_state(
        self, key: str, items: Sequence[Any], namespace: str = DEFAULT_NAMESPACE, *,
        field: str | None = None, max_length: int | None = None,
        expected_version: int | None = None,
    ) -> StateItem:
        """Append to a list value (or to list `field` of a dict), keeping the last `max_length`."""
        return self.batch_update([StateOp.append(
            key, items, namespace, field=field, max_length=max_length,
            expected_version=expected_version)])[0]

    def batch_update(self, ops: Sequence[StateOp]) -> list[StateItem]:
        """Apply `ops` atomically in one round trip: all of them, or none (raises)."""
        call = prepare(ops)
        return parse_reply(call, self._call(call))

    def _call(self, call: PreparedCall) -> list[Any]:
        try:
            reply = run_script(self._pool, APPLY_SCRIPT, call.keys, call.args)
        except ResponseError as exc:
            raise self._script_error(call, exc) from exc
        except _NET_ERRORS as exc:
            raise self._unavailable(exc, "write") from exc
        self.stats.script_updates += 1
        return list(reply)

    def update_state_atomic(
        self, key: str, update_fn: Callable[[Any], Any], namespace: str = DEFAULT_NAMESPACE, *,
        max_retries: int | None = None,
    ) -> tuple[Any, int]:
        """Apply ``update_fn(current_value)`` atomically; returns ``(new_value, version)``.

        `update_fn` may run several times. Raises :class:`StateConflictError` after
        `max_retries` lost races.
        """
        name = state_key(namespace, key)
        limit = self.retry_policy.max_retries if max_retries is None else max_retries
        conflicts = 0
        while True:
            try:
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.watch(name)
                    raw_value, raw_version = pipe.hmget(name, "value", "version")
                    new_value = update_fn(decode_value(raw_value))
                    call = prepare([StateOp.set(key, new_value, namespace,
                                                expected_version=int(raw_version or 0))])
                    pipe.multi()
                    pipe.evalsha(APPLY_SHA, 1, *call.keys, *call.args)
                    reply = pipe.execute()[0]
                item = parse_reply(call, reply)[0]
            except NoScriptError:
                self._redis.script_load(APPLY_SCRIPT)
                continue
            except (WatchError, VersionMismatchError):
                conflicts += 1
                self.stats.watch_conflicts += 1
                if conflicts > limit:
                    raise StateConflictError(namespace, key, conflicts) from None
                time.sleep(self.retry_policy.delay(conflicts))
                continue
            except _NET_ERRORS as exc:
                raise self._unavailable(exc, "update_state_atomic") from exc
            self.stats.watch_updates += 1
            return item.value, item.version

    # ---- subscriptions

    def subscribe_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *,
        maxsize: int = DEFAULT_QUEUE_SIZE, timeout: float = 10.0,
    ) -> SyncStateQueue:
        """Blocking queue of ``(value, version, timestamp)``; first item: the current value."""
        queue = SyncStateQueue(namespace, key, maxsize)
        ready = threading.Event()
        sink = Sink(namespace, key, state_channel(namespace, key),
                    deliver=lambda update: queue._put_latest(update.item), on_first=ready.set)
        queue._sink = sink
        self._add_sink(sink, ready, timeout)
        return queue

    def watch_state(
        self, key: str, callback: Callable[[StateUpdate], None],
        namespace: str = DEFAULT_NAMESPACE, *, timeout: float = 10.0,
    ) -> StateWatch:
        """Call `callback(update)` in the listener thread now and on every change of `key`.

        The callback must not block for long: it delays every other subscription.
        """
        ready = threading.Event()
        sink = Sink(namespace, key, state_channel(namespace, key),
                    deliver=_guarded(callback), on_first=ready.set)
        self._add_sink(sink, ready, timeout)
        return StateWatch(self, sink)

    def unsubscribe_state(
        self, target: str | SyncStateQueue | StateWatch, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Stop one queue/watch, or every subscription of this manager to key `target`."""
        if isinstance(target, StateWatch):
            target.cancel()
        elif isinstance(target, SyncStateQueue):
            if target._sink is not None:
                self._remove_sink(target._sink)
        else:
            for sink in self._hub.for_channel(state_channel(namespace, target)):
                self._remove_sink(sink)

    def _add_sink(self, sink: Sink, ready: threading.Event, timeout: float) -> None:
        with self._lock:
            if self._closed:
                raise StateError("state manager is closed")
            self._hub.add(sink)
            self._requests.push("add", sink)
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="hean-state-listener", daemon=True)
                self._listener.start()
        self._wake()
        if not ready.wait(timeout):
            self._remove_sink(sink)
            raise StateUnavailableError(
                f"subscription to {sink.namespace}:{sink.key} not ready within {timeout} s")

    def _remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._hub.remove(sink)
            self._requests.push("remove", sink)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(*_NET_ERRORS):
            self._redis.publish(self._control, b"wake")

    def _listen(self) -> None:
        attempt = 0
        while not self._closed:
            pubsub = self._sub_redis.pubsub()
            try:
                with self._lock:
                    channels = self._reset_connection_state()
                pubsub.subscribe(*channels)
                while not self._closed:
                    # Blocks up to 5 s, then re-checks `_closed`; the socket itself has no timeout.
                    message = pubsub.get_message(timeout=5.0)
                    attempt = 0
                    with self._lock:
                        subscribe, unsubscribe, targets = self._drain_requests()
                        routed = self._route(message)
                    if subscribe:
                        pubsub.subscribe(*subscribe)
                    if unsubscribe:
                        pubsub.unsubscribe(*unsubscribe)
                    if targets or routed:
                        self._resync([*targets, *routed])
            except (*_NET_ERRORS, StateUnavailableError) as exc:
                if self._closed:
                    break
                attempt += 1
                self.stats.reconnects += 1
                delay = RECONNECT_POLICY.delay(attempt) + 0.01
                self._log_listener_error(exc, attempt, delay)
                time.sleep(delay)
            except Exception:
                log.exception("event=state_listener_error")
                time.sleep(RECONNECT_POLICY.cap)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _resync(self, sinks: Sequence[Sink]) -> None:
        targets = self._snapshot_targets(sinks)
        with self._redis.pipeline(transaction=False) as pipe:
            for namespace, key in targets:
                pipe.hmget(state_key(namespace, key), *HASH_FIELDS)
            raws = pipe.execute()
        updates = [parse_hash(ns, k, raw) for (ns, k), raw in zip(targets, raws, strict=True)]
        with self._lock:
            self._deliver_snapshots(sinks, updates)

    def close(self) -> None:
        """Stop the listener and close every connection."""
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
        self._wake()
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=10)
        self._redis.close()
        self._pool.disconnect()
        self._sub_redis.close()
        self._sub_pool.disconnect()
        _forget_sync(self)

    def __enter__(self) -> SyncRedisStateManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _guarded(callback: Callable[[StateUpdate], None]) -> Callable[[StateUpdate], None]:
    """A callback that logs its own exceptions instead of killing the listener."""

    def call(update: StateUpdate) -> None:
        try:
            callback(update)
        except Exception:
            log.exception(
                "event=state_callback_error namespace=%s key=%s version=%d",
                update.namespace, update.key, update.version,
            )

    return call


# =========================================================================== singletons

_async_managers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RedisStateManager]]
_async_managers = weakref.WeakKeyDictionary()
_sync_managers: dict[str, SyncRedisStateManager] = {}
_sync_lock = threading.Lock()


def _resolve_url(url: str | None) -> str:
    if url:
        return url
    from hean.config import get_settings

    return get_settings().effective_redis_url()


async def get_redis_state_manager(url: str | None = None) -> RedisStateManager:
    """The shared async manager of the running event loop for `url` (default: settings)."""
    loop = asyncio.get_running_loop()
    resolved = _resolve_url(url)
    per_loop = _async_managers.setdefault(loop, {})
    manager = per_loop.get(resolved)
    if manager is None or manager.closed:
        manager = per_loop[resolved] = RedisStateManager(resolved)
    return manager


def get_sync_state_manager(url: str | None = None) -> SyncRedisStateManager:
    """The shared sync manager of this process for `url` (default: settings)."""
    resolved = _resolve_url(url)
    with _sync_lock:
        manager = _sync_managers.get(resolved)
        if manager is None or manager.closed:
            manager = _sync_managers[resolved] = SyncRedisStateManager(resolved)
        return manager


def close_state_managers() -> None:
    """Close every shared sync manager (async ones close with ``await manager.aclose()``)."""
    with _sync_lock:
        managers = list(_sync_managers.values())
    for manager in managers:
        manager.close()


def _forget_async(manager: RedisStateManager) -> None:
    for per_loop in list(_async_managers.values()):
        for url, candidate in list(per_loop.items()):
            if candidate is manager:
                del per_loop[url]


def _forget_sync(manager: SyncRedisStateManager) -> None:
    with _sync_lock:
        for url, candidate in list(_sync_managers.items()):
            if candidate is manager:
                del _sync_managers[url]
