"""The state bus's asyncio face (``redis.asyncio``): the I/O around :mod:`._state_core`, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.exceptions import NoScriptError, ResponseError, WatchError

from hean.core.system import _state_core as core
from hean.core.system._state_core import DEFAULT_NAMESPACE, StateItem, StateOp, StateUpdate, StateWatch
from hean.redis_client import run_script_async


class StateQueue(asyncio.Queue[StateItem], core.SubscriptionStream):
    """asyncio queue of :class:`StateItem` for one key; when full, the oldest item is dropped.

    Once the subscription ends (``unsubscribe_state``, ``aclose()``), ``get()`` returns what is
    left, then raises :class:`SubscriptionEndedError`, waking a ``get()`` already waiting;
    ``async for`` stops there.
    """

    def __init__(self, namespace: str, key: str, maxsize: int = core.DEFAULT_QUEUE_SIZE) -> None:
        super().__init__(maxsize)
        self._init_stream(namespace, key)
        self._changed = asyncio.Event()  # set by every put and by the end

    def _put(self, item: StateItem) -> None:
        super()._put(item)  # asyncio.Queue's hook for subclasses (as in PriorityQueue)
        self._changed.set()

    def _put_latest(self, item: StateItem) -> None:
        if not self.ended:
            self.dropped += core.put_latest(self, item, asyncio.QueueFull, asyncio.QueueEmpty)

    def _end(self) -> None:
        self.ended = True
        self._changed.set()

    async def get(self) -> StateItem:
        """The next item; :class:`SubscriptionEndedError` once the subscription ended and none is left."""
        while self.empty():
            if self.ended:
                raise self._end_of_stream()
            self._changed.clear()
            await self._changed.wait()
        return super().get_nowait()

    def get_nowait(self) -> StateItem:
        """The next item if there is one, else QueueEmpty (SubscriptionEndedError once ended)."""
        if self.ended and self.empty():
            raise self._end_of_stream()
        return super().get_nowait()

    async def __aiter__(self) -> AsyncIterator[StateItem]:
        while True:
            try:
                item = await self.get()
            except core.SubscriptionEndedError:
                return
            yield item


class RedisStateManager(core.StateManagerCore[aioredis.BlockingConnectionPool, aioredis.Redis]):
    """asyncio face of the state bus; get the shared one with :func:`get_redis_state_manager`."""

    def __init__(
        self, url: str, *, max_connections: int = 64, retry_policy: core.RetryPolicy | None = None
    ) -> None:
        super().__init__(
            url, retry_policy, max_connections, aioredis.BlockingConnectionPool, aioredis.Redis, AsyncRetry
        )
        self._listener: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()

    # ---- reads

    async def get_state_versioned(self, key: str, namespace: str = DEFAULT_NAMESPACE) -> StateItem:
        """Value, version and timestamp of `key` (``(None, 0, 0.0)`` if never written)."""
        return (await self._read(namespace, key)).item

    async def get_state(self, key: str, namespace: str = DEFAULT_NAMESPACE, default: Any = None) -> Any:
        """Current value of `key`, or `default` if it does not exist."""
        update = await self._read(namespace, key)
        return default if update.value is None else update.value

    async def _read(self, namespace: str, key: str) -> StateUpdate:
        name = core.state_key(namespace, key)
        for attempt in range(core.READ_ATTEMPTS):
            try:
                raw = await self._redis.hmget(name, *core.HASH_FIELDS)
                return core.parse_hash(namespace, key, raw)
            except core.NET_ERRORS as exc:
                if attempt == core.READ_ATTEMPTS - 1:
                    raise self._unavailable(exc, "read") from exc
                await asyncio.sleep(core.RECONNECT_POLICY.delay(attempt))
        raise AssertionError("unreachable")

    # ---- Lua writes

    async def set_state(
        self,
        key: str,
        value: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Store `value`; with `expected_version`, only if the key is at that version (CAS)."""
        return (
            await self.batch_update([StateOp.set(key, value, namespace, expected_version=expected_version)])
        )[0]

    async def compare_and_set(
        self, key: str, value: Any, expected_version: int, namespace: str = DEFAULT_NAMESPACE
    ) -> StateItem:
        """Store `value` only if `key` is at `expected_version` (0: never written)."""
        return await self.set_state(key, value, namespace, expected_version=expected_version)

    async def delete_state(
        self, key: str, namespace: str = DEFAULT_NAMESPACE, *, expected_version: int | None = None
    ) -> bool:
        """Delete `key` (publishes value None, bumps the version); False if it had no value."""
        call = core.prepare([StateOp.delete(key, namespace, expected_version=expected_version)])
        reply = await self._call(call)
        core.parse_reply(call, reply)
        return core.deleted_flags(reply)[0]

    async def increment_state(
        self,
        key: str,
        increments: Mapping[str, int | float],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Add numbers to top-level fields of a dict value, server-side (missing fields: 0)."""
        return (
            await self.batch_update(
                [StateOp.increment(key, increments, namespace, expected_version=expected_version)]
            )
        )[0]

    async def merge_state(
        self,
        key: str,
        patch: Mapping[str, Any],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        expected_version: int | None = None,
    ) -> StateItem:
        """Set top-level fields of a dict value from `patch` (shallow merge), server-side."""
        return (
            await self.batch_update([StateOp.merge(key, patch, namespace, expected_version=expected_version)])
        )[0]

    async def append_state(
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
        return (
            await self.batch_update(
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
            )
        )[0]

    async def batch_update(self, ops: Sequence[StateOp]) -> list[StateItem]:
        """Apply `ops` atomically in one round trip: all of them, or none (raises)."""
        call = core.prepare(ops)
        return core.parse_reply(call, await self._call(call))

    async def _call(self, call: core.PreparedCall) -> list[Any]:
        try:
            reply = await run_script_async(self._pool, core.APPLY_SCRIPT.source, call.keys, call.args)
        except (ResponseError, *core.NET_ERRORS) as exc:
            raise self._write_error(call, exc) from exc
        return self._written(reply)

    # ---- WATCH/MULTI/EXEC

    async def update_state_atomic(
        self,
        key: str,
        update_fn: Callable[[Any], Any | Awaitable[Any]],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        max_retries: int | None = None,
    ) -> tuple[Any, int]:
        """Apply ``update_fn(current_value)`` atomically; returns ``(new_value, version)``.

        `update_fn` may run several times (once per attempt) and may be async. Raises
        :class:`StateConflictError` after `max_retries` lost races.
        """
        name = core.state_key(namespace, key)
        limit = self.retry_policy.max_retries if max_retries is None else max_retries
        conflicts = 0
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(name)
                    raw_value, raw_version = await pipe.hmget(name, "value", "version")
                    new_value = update_fn(core.decode_value(raw_value))
                    if inspect.isawaitable(new_value):
                        new_value = await new_value
                    call = core.prepare(
                        [StateOp.set(key, new_value, namespace, expected_version=int(raw_version or 0))]
                    )
                    pipe.multi()
                    pipe.evalsha(core.APPLY_SCRIPT.sha, 1, *call.keys, *call.args)
                    reply = (await pipe.execute())[0]
                item = core.parse_reply(call, reply)[0]
            except NoScriptError:
                await self._redis.script_load(core.APPLY_SCRIPT.source)
                continue
            except (WatchError, core.VersionMismatchError):
                conflicts += 1
                await asyncio.sleep(self._lost_race(namespace, key, conflicts, limit))
                continue
            except core.NET_ERRORS as exc:
                raise self._unavailable(exc, "update_state_atomic") from exc
            self.stats.watch_updates += 1
            return item.value, item.version

    # ---- subscriptions

    async def subscribe_state(
        self,
        key: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        maxsize: int = core.DEFAULT_QUEUE_SIZE,
        timeout: float = 10.0,
    ) -> StateQueue:
        """Queue of ``(value, version, timestamp)``; the first item is the current value."""
        queue = StateQueue(namespace, key, maxsize)
        ready = asyncio.Event()
        await self._add_sink(self._queue_sink(queue, ready.set), ready, timeout)
        return queue

    async def watch_state(
        self,
        key: str,
        callback: Callable[[StateUpdate], None],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        timeout: float = 10.0,
    ) -> StateWatch:
        """Call `callback(update)` (in the listener task) now and on every change of `key`."""
        ready = asyncio.Event()
        sink = self._watch_sink(namespace, key, callback, ready.set)
        await self._add_sink(sink, ready, timeout)
        return StateWatch(self, sink)

    async def unsubscribe_state(
        self, target: str | StateQueue | StateWatch, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Stop one queue/watch, or every subscription of this manager to key `target`."""
        for sink in self._targets(target, namespace):
            self._drop_sink(sink)
        await self._wake()

    async def _add_sink(self, sink: core.Sink, ready: asyncio.Event, timeout: float) -> None:
        if self._closed:
            raise core.StateError("state manager is closed")
        self._hub.add(sink)
        self._requests.push("add", sink)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="hean-state-listener"
            )
        await self._wake()
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            self._remove_sink(sink)
            raise core.StateUnavailableError(
                f"subscription to {sink.namespace}:{sink.key} not ready within {timeout} s"
            ) from None

    def _remove_sink(self, sink: core.Sink) -> None:
        self._drop_sink(sink)
        # Not a coroutine (StateWatch.cancel() is shared with the sync face): the wake-up runs
        # as a task of the listener's loop, so the listener unsubscribes without other traffic.
        listener = self._listener
        if listener is not None and not listener.done():
            waker = listener.get_loop().create_task(self._wake())
            self._wakers.add(waker)
            waker.add_done_callback(self._wakers.discard)

    async def _wake(self) -> None:
        with contextlib.suppress(*core.NET_ERRORS):
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
            except (*core.NET_ERRORS, core.StateUnavailableError) as exc:
                attempt += 1
                self.stats.reconnects += 1
                delay = core.RECONNECT_POLICY.delay(attempt) + 0.01
                self._log_listener_error(exc, attempt, delay)
                await asyncio.sleep(delay)
            except Exception:
                core.log.exception("event=state_listener_error")
                await asyncio.sleep(core.RECONNECT_POLICY.cap)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _resync(self, sinks: Sequence[core.Sink]) -> None:
        targets = self._snapshot_targets(sinks)
        async with self._redis.pipeline(transaction=False) as pipe:
            for namespace, key in targets:
                pipe.hmget(core.state_key(namespace, key), *core.HASH_FIELDS)
            raws = await pipe.execute()
        self._deliver_snapshots(
            sinks, [core.parse_hash(ns, k, raw) for (ns, k), raw in zip(targets, raws, strict=True)]
        )

    # ---- lifecycle

    async def aclose(self) -> None:
        """Stop the listener, end every subscription's stream and close every connection."""
        self._closed = True
        self._end_streams()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        for waker in list(self._wakers):
            waker.cancel()
        await self._redis.aclose()
        await self._pool.disconnect()
        await self._sub_redis.aclose()
        await self._sub_pool.disconnect()
        _forget(self)

    async def __aenter__(self) -> RedisStateManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_managers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RedisStateManager]]
_managers = weakref.WeakKeyDictionary()


async def get_redis_state_manager(url: str | None = None) -> RedisStateManager:
    """The shared async manager of the running event loop for `url` (default: settings)."""
    loop = asyncio.get_running_loop()
    resolved = core.resolve_url(url)
    per_loop = _managers.setdefault(loop, {})
    manager = per_loop.get(resolved)
    if manager is None or manager.closed:
        manager = per_loop[resolved] = RedisStateManager(resolved)
    return manager


def _forget(manager: RedisStateManager) -> None:
    for per_loop in list(_managers.values()):
        for url, candidate in list(per_loop.items()):
            if candidate is manager:
                del per_loop[url]
