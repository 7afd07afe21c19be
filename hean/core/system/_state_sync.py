"""The state bus's blocking face (``redis.Redis``): the I/O around :mod:`._state_core`, nothing else."""

from __future__ import annotations

import contextlib
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError, WatchError
from redis.retry import Retry

from hean.core.system import _state_core as core
from hean.core.system._state_core import DEFAULT_NAMESPACE, StateItem, StateOp, StateUpdate, StateWatch
from hean.redis_client import TransactionFence, execute_transaction, run_script

#: The end-of-stream marker of a SyncStateQueue (never a real item: versions start at 0).
_END = StateItem(None, -1, 0.0)


class SyncStateQueue(queue_module.Queue[StateItem], core.SubscriptionStream):
    """Blocking queue of :class:`StateItem` for one key; iterate it or call ``get()``.

    Under eventlet's monkey patching ``queue.Queue`` is green, so ``get()`` yields to the hub.
    When full, the oldest item is dropped. Once the subscription ends (``unsubscribe_state``,
    ``close()``), ``get()`` returns what is left, then raises :class:`SubscriptionEndedError`,
    waking a ``get()`` already waiting; iteration stops there.
    """

    def __init__(self, namespace: str, key: str, maxsize: int = core.DEFAULT_QUEUE_SIZE) -> None:
        super().__init__(maxsize)
        self._init_stream(namespace, key)

    def _put_latest(self, item: StateItem) -> None:
        if not self.ended:
            self.dropped += core.put_latest(self, item, queue_module.Full, queue_module.Empty)

    def _end(self) -> None:
        # A marker item is the only way to wake a waiting get() that both the stdlib queue and
        # eventlet's green one (which replaces it under monkey patching) offer.
        if not self.ended:
            self.dropped += core.put_latest(self, _END, queue_module.Full, queue_module.Empty)
            self.ended = True

    def get(self, block: bool = True, timeout: float | None = None) -> StateItem:
        """As ``queue.Queue.get``; :class:`SubscriptionEndedError` once ended and none is left."""
        item = super().get(block, timeout)
        if item is _END:
            self.put_nowait(item)  # it stays last, so every later get() ends as well
            raise self._end_of_stream()
        return item

    def empty(self) -> bool:
        """True when no item is left to take (``qsize()`` counts the end marker)."""
        return self.qsize() <= (1 if self.ended else 0)

    def __iter__(self) -> Iterator[StateItem]:
        while True:
            try:
                item = self.get()
            except core.SubscriptionEndedError:
                return
            yield item


class SyncRedisStateManager(core.StateManagerCore[redis.BlockingConnectionPool, redis.Redis]):
    """Blocking face of the state bus for Celery tasks and eventlet handlers.

    Thread-safe. Subscriptions share one pub/sub connection read by one listener thread
    (a greenlet under eventlet), which calls watch callbacks and fills queues.
    """

    def __init__(
        self, url: str, *, max_connections: int = 64, retry_policy: core.RetryPolicy | None = None
    ) -> None:
        super().__init__(url, retry_policy, max_connections, redis.BlockingConnectionPool, redis.Redis, Retry)
        self._lock = threading.RLock()
        self._listener: threading.Thread | None = None

    # ---- reads

    def get_state_versioned(self, key: str, namespace: str = DEFAULT_NAMESPACE) -> StateItem:
        """Value, version and timestamp of `key` (``(None, 0, 0.0)`` if never written)."""
        return self._read(namespace, key).item

    def get_state(self, key: str, namespace: str = DEFAULT_NAMESPACE, default: Any = None) -> Any:
        """Current value of `key`, or `default` if it does not exist."""
        update = self._read(namespace, key)
        return default if update.value is None else update.value

    def _read(self, namespace: str, key: str) -> StateUpdate:
        name = core.state_key(namespace, key)
        for attempt in range(core.READ_ATTEMPTS):
            try:
                return core.parse_hash(namespace, key, self._redis.hmget(name, *core.HASH_FIELDS))
            except core.NET_ERRORS as exc:
                if attempt == core.READ_ATTEMPTS - 1:
                    raise self._unavailable(exc, "read") from exc
                time.sleep(core.RECONNECT_POLICY.delay(attempt))
        raise AssertionError("unreachable")

    # ---- Lua writes

    def set_state(
        self,
        key: str,
        value: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
        fence: TransactionFence | None = None,
    ) -> StateItem:
        """Store `value`; with `expected_version`, only if the key is at that version (CAS); with
        `fence`, only while it holds (`batch_update`)."""
        ops = [StateOp.set(key, value, namespace, expected_version=expected_version)]
        return self.batch_update(ops, fence)[0]

    def compare_and_set(
        self, key: str, value: Any, expected_version: int, namespace: str = DEFAULT_NAMESPACE
    ) -> StateItem:
        """Store `value` only if `key` is at `expected_version` (0: never written)."""
        return self.set_state(key, value, namespace, expected_version=expected_version)

    def delete_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *, expected_version: int | None = None
    ) -> bool:
        """Delete `key` (publishes value None, bumps the version); False if it had no value."""
        call = core.prepare([StateOp.delete(key, namespace, expected_version=expected_version)])
        reply = self._call(call)
        core.parse_reply(call, reply)
        return core.deleted_flags(reply)[0]

    def increment_state(
        self,
        key: str,
        increments: Mapping[str, int | float],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Add numbers to top-level fields of a dict value, server-side (missing fields: 0)."""
        return self.batch_update(
            [StateOp.increment(key, increments, namespace, expected_version=expected_version)]
        )[0]

    def merge_state(
        self,
        key: str,
        patch: Mapping[str, Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Set top-level fields of a dict value from `patch` (shallow merge), server-side."""
        return self.batch_update([StateOp.merge(key, patch, namespace, expected_version=expected_version)])[0]

    def append_state(
        self,
        key: str,
        items: Sequence[Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        field: str | None = None,
        max_length: int | None = None,
        expected_version: int | None = None,
    ) -> StateItem:
        """Append to a list value (or to list `field` of a dict), keeping the last `max_length`."""
        return self.batch_update(
            [
                StateOp.append(
                    key,
                    items,
                    namespace,
                    field=field,
                    max_length=max_length,
                    expected_version=expected_version,
                )
            ]
        )[0]

    def batch_update(self, ops: Sequence[StateOp], fence: TransactionFence | None = None) -> list[StateItem]:
        """Apply `ops` atomically in one round trip: all of them, or none (raises).

        With `fence` (unchained: hean.redis_client.TransactionFence), only while it holds: in a
        MULTI/EXEC under it, one round trip more (the engine worker publishes its state under its
        shard's lease: a replaced worker's would show what never committed)."""
        call = core.prepare(ops)
        return core.parse_reply(call, self._call(call, fence))

    def _call(self, call: core.PreparedCall, fence: TransactionFence | None = None) -> list[Any]:
        try:
            if fence is None:
                reply = run_script(self._pool, core.APPLY_SCRIPT.source, call.keys, call.args)
            else:
                pipe = self._redis.pipeline(transaction=True)
                pipe.execute_command("EVAL", core.APPLY_SCRIPT.source, len(call.keys), *call.keys, *call.args)
                reply = execute_transaction(self._pool, pipe, fence)[0]
        except (ResponseError, *core.NET_ERRORS) as exc:
            raise self._write_error(call, exc) from exc
        return self._written(reply)

    # ---- WATCH/MULTI/EXEC

    def update_state_atomic(
        self,
        key: str,
        update_fn: Callable[[Any], Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        max_retries: int | None = None,
    ) -> tuple[Any, int]:
        """Apply ``update_fn(current_value)`` atomically; returns ``(new_value, version)``.

        `update_fn` may run several times. Raises :class:`StateConflictError` after
        `max_retries` lost races.
        """
        name = core.state_key(namespace, key)
        limit = self.retry_policy.max_retries if max_retries is None else max_retries
        conflicts = 0
        while True:
            try:
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.watch(name)
                    raw_value, raw_version = pipe.hmget(name, "value", "version")
                    new_value = update_fn(core.decode_value(raw_value))
                    call = core.prepare(
                        [StateOp.set(key, new_value, namespace, expected_version=int(raw_version or 0))]
                    )
                    pipe.multi()
                    pipe.evalsha(core.APPLY_SCRIPT.sha, 1, *call.keys, *call.args)
                    reply = pipe.execute()[0]
                item = core.parse_reply(call, reply)[0]
            except NoScriptError:
                self._redis.script_load(core.APPLY_SCRIPT.source)
                continue
            except (WatchError, core.VersionMismatchError):
                conflicts += 1
                time.sleep(self._lost_race(namespace, key, conflicts, limit))
                continue
            except core.NET_ERRORS as exc:
                raise self._unavailable(exc, "update_state_atomic") from exc
            self.stats.watch_updates += 1
            return item.value, item.version

    # ---- subscriptions

    def subscribe_state(
        self,
        key: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        maxsize: int = core.DEFAULT_QUEUE_SIZE,
        timeout: float = 10.0,
    ) -> SyncStateQueue:
        """Blocking queue of ``(value, version, timestamp)``; first item: the current value."""
        queue = SyncStateQueue(namespace, key, maxsize)
        ready = threading.Event()
        self._add_sink(self._queue_sink(queue, ready.set), ready, timeout)
        return queue

    def watch_state(
        self,
        key: str,
        callback: Callable[[StateUpdate], None],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        timeout: float = 10.0,
    ) -> StateWatch:
        """Call `callback(update)` in the listener thread now and on every change of `key`.

        The callback must not block for long: it delays every other subscription.
        """
        ready = threading.Event()
        sink = self._watch_sink(namespace, key, callback, ready.set)
        self._add_sink(sink, ready, timeout)
        return StateWatch(self, sink)

    def unsubscribe_state(
        self, target: str | SyncStateQueue | StateWatch, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Stop one queue/watch, or every subscription of this manager to key `target`."""
        with self._lock:
            for sink in self._targets(target, namespace):
                self._drop_sink(sink)
        self._wake()

    def _add_sink(self, sink: core.Sink, ready: threading.Event, timeout: float) -> None:
        with self._lock:
            if self._closed:
                raise core.StateError("state manager is closed")
            self._hub.add(sink)
            self._requests.push("add", sink)
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="hean-state-listener", daemon=True
                )
                self._listener.start()
        self._wake()
        if not ready.wait(timeout):
            self._remove_sink(sink)
            raise core.StateUnavailableError(
                f"subscription to {sink.namespace}:{sink.key} not ready within {timeout} s"
            )

    def _remove_sink(self, sink: core.Sink) -> None:
        with self._lock:
            self._drop_sink(sink)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(*core.NET_ERRORS):
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
            except (*core.NET_ERRORS, core.StateUnavailableError) as exc:
                if self._closed:
                    break
                attempt += 1
                self.stats.reconnects += 1
                delay = core.RECONNECT_POLICY.delay(attempt) + 0.01
                self._log_listener_error(exc, attempt, delay)
                time.sleep(delay)
            except Exception:
                core.log.exception("event=state_listener_error")
                time.sleep(core.RECONNECT_POLICY.cap)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _resync(self, sinks: Sequence[core.Sink]) -> None:
        targets = self._snapshot_targets(sinks)
        with self._redis.pipeline(transaction=False) as pipe:
            for namespace, key in targets:
                pipe.hmget(core.state_key(namespace, key), *core.HASH_FIELDS)
            raws = pipe.execute()
        updates = [core.parse_hash(ns, k, raw) for (ns, k), raw in zip(targets, raws, strict=True)]
        with self._lock:
            self._deliver_snapshots(sinks, updates)

    # ---- lifecycle

    def close(self) -> None:
        """Stop the listener, end every subscription's stream and close every connection."""
        with self._lock:
            self._closed = True
            self._end_streams()
            listener, self._listener = self._listener, None
        self._wake()
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=10)
        self._redis.close()
        self._pool.disconnect()
        self._sub_redis.close()
        self._sub_pool.disconnect()
        _forget(self)

    def __enter__(self) -> SyncRedisStateManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_managers: dict[str, SyncRedisStateManager] = {}
_managers_lock = threading.Lock()


def get_sync_state_manager(url: str | None = None) -> SyncRedisStateManager:
    """The shared sync manager of this process for `url` (default: settings)."""
    resolved = core.resolve_url(url)
    with _managers_lock:
        manager = _managers.get(resolved)
        if manager is None or manager.closed:
            manager = _managers[resolved] = SyncRedisStateManager(resolved)
        return manager


def close_state_managers() -> None:
    """Close every shared sync manager (async ones close with ``await manager.aclose()``)."""
    with _managers_lock:
        managers = list(_managers.values())
    for manager in managers:
        manager.close()


def _forget(manager: SyncRedisStateManager) -> None:
    with _managers_lock:
        for url, candidate in list(_managers.items()):
            if candidate is manager:
                del _managers[url]
