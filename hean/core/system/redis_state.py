"""Versioned shared state over Redis: one atomic write path, pub/sub updates, two faces.

The original docs' API works as written::

    from hean.core.system.redis_state import get_redis_state_manager
    manager = await get_redis_state_manager()
    new_value, version = await manager.update_state_atomic(
        "trading_state", lambda cur: {"orders": (cur or {}).get("orders", 0) + 1})
    queue = await manager.subscribe_state("trading_state")
    value, version, timestamp = await queue.get()

:class:`RedisStateManager` is the asyncio face (``redis.asyncio``,
:mod:`hean.core.system._state_async`); :class:`SyncRedisStateManager` is the blocking face for
Celery tasks and eventlet handlers (``redis.Redis``, :mod:`hean.core.system._state_sync`; under
``eventlet.monkey_patch()`` its listener thread is a greenlet). As python-socketio's ``Server``
and ``AsyncServer`` share ``BaseServer``, both share :mod:`hean.core.system._state_core` (key
schema, codec, the Lua script shipped as ``lua/state_apply.lua``, reading replies and messages,
subscription bookkeeping) and differ only in I/O: each runs the script the same way, by its
SHA with a fallback on NOSCRIPT (:func:`hean.redis_client.run_script` and its asyncio twin
:func:`~hean.redis_client.run_script_async`). This module is the public import path.

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
    * Ending a subscription wakes whoever waits on it. ``StateWatch.cancel()`` (like
      ``unsubscribe_state``) wakes the manager's listener, which unsubscribes the key's
      channel at once if nothing else follows it. A queue that was unsubscribed (or whose
      manager closed) hands out what it still holds, then its ``get()`` raises
      :class:`SubscriptionEndedError`, also a ``get()`` already waiting; iterating it stops.
"""

from hean.core.system._state_async import (
    RedisStateManager,
    StateQueue,
    get_redis_state_manager,
)
from hean.core.system._state_core import (
    CHANNEL_PATTERN,
    CHANNEL_PREFIX,
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_SIZE,
    KEY_PREFIX,
    KEY_RE,
    MAX_VALUE_BYTES,
    NAMESPACE_RE,
    ManagerStats,
    RetryPolicy,
    StateConflictError,
    StateError,
    StateItem,
    StateOp,
    StateOperationError,
    StateUnavailableError,
    StateUpdate,
    StateValidationError,
    StateWatch,
    SubscriptionEndedError,
    VersionMismatchError,
    state_channel,
    state_key,
)
from hean.core.system._state_sync import (
    SyncRedisStateManager,
    SyncStateQueue,
    close_state_managers,
    get_sync_state_manager,
)

__all__ = [
    "CHANNEL_PATTERN",
    "CHANNEL_PREFIX",
    "DEFAULT_NAMESPACE",
    "DEFAULT_QUEUE_SIZE",
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
    "SubscriptionEndedError",
    "SyncRedisStateManager",
    "SyncStateQueue",
    "VersionMismatchError",
    "close_state_managers",
    "get_redis_state_manager",
    "get_sync_state_manager",
    "state_channel",
    "state_key",
]
