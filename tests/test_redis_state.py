"""State bus behaviour against a real Redis: API, atomic operations, validation, subscriptions."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hean.config import reload_settings
from hean.core.system import _state_core as schema
from hean.core.system.redis_state import (
    MAX_VALUE_BYTES,
    RedisStateManager,
    StateConflictError,
    StateItem,
    StateOp,
    StateOperationError,
    StateUpdate,
    StateValidationError,
    SubscriptionEndedError,
    SyncRedisStateManager,
    VersionMismatchError,
    close_state_managers,
    get_redis_state_manager,
    get_sync_state_manager,
    state_channel,
    state_key,
)
from support import child_report

GET_TIMEOUT = 10.0  # anti-hang only


@pytest.fixture(scope="module", autouse=True)
def _close_shared_managers() -> Iterator[None]:
    yield
    close_state_managers()


def _key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def _drain_until(queue: Any, version: int) -> list[StateItem]:
    items = []
    while True:
        item = queue.get(timeout=GET_TIMEOUT)
        items.append(item)
        if item.version >= version:
            return items


# --------------------------------------------------------------------------- original docs


def test_original_docs_snippet_runs_as_written(
    own_db_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", own_db_url)
    reload_settings()

    async def snippet() -> tuple[Any, int, Any, int, float]:
        from hean.core.system.redis_state import get_redis_state_manager

        manager = await get_redis_state_manager()
        new_value, version = await manager.update_state_atomic(
            "trading_state",
            lambda current: {"orders": (current or {}).get("orders", 0) + 1},
        )
        queue = await manager.subscribe_state("trading_state")
        value, version2, timestamp = await queue.get()
        assert manager is await get_redis_state_manager()
        await manager.aclose()
        return new_value, version, value, version2, timestamp

    try:
        new_value, version, value, version2, timestamp = asyncio.run(snippet())
    finally:
        monkeypatch.undo()
        reload_settings()
    assert new_value == {"orders": 1} and version == 1
    assert (value, version2) == ({"orders": 1}, 1)
    assert timestamp > 1_600_000_000


# --------------------------------------------------------------------------- storage & versions


def test_value_version_and_timestamp_live_in_one_hash(
    sync_manager: SyncRedisStateManager, redis_client: redis.Redis
) -> None:
    item = sync_manager.set_state("trading_state", {"orders": 3}, "desk-1")
    stored = redis_client.hgetall("hean:state:{desk-1}:trading_state")
    assert stored[b"value"] == b'{"orders":3}'
    assert int(stored[b"version"]) == item.version == 1
    assert float(stored[b"ts"]) == item.timestamp
    assert state_key("desk-1", "trading_state") == "hean:state:{desk-1}:trading_state"
    assert state_channel("desk-1", "trading_state") == "hean:state-ch:desk-1:trading_state"


def test_every_write_publishes_value_version_timestamp(
    sync_manager: SyncRedisStateManager, own_db_url: str
) -> None:
    listener = redis.Redis.from_url(own_db_url, socket_timeout=None)
    pubsub = listener.pubsub()
    pubsub.subscribe(state_channel("global", "pub"))
    assert pubsub.get_message(timeout=GET_TIMEOUT)["type"] == "subscribe"
    try:
        writes = [
            sync_manager.set_state("pub", {"a": 1}),
            sync_manager.increment_state("pub", {"a": 2}),
            sync_manager.merge_state("pub", {"b": [1]}),
            sync_manager.append_state("pub", [2], field="b"),
        ]
        sync_manager.update_state_atomic("pub", lambda cur: {**cur, "c": True})
        assert sync_manager.delete_state("pub")
        received = []
        while len(received) < 6:
            message = pubsub.get_message(timeout=GET_TIMEOUT)
            assert message is not None
            received.append(json.loads(message["data"]))
    finally:
        pubsub.close()
        listener.close()
    assert [m["version"] for m in received] == [1, 2, 3, 4, 5, 6]
    assert set(received[0]) == {"namespace", "key", "value", "version", "timestamp", "deleted"}
    assert [m["value"] for m in received[:4]] == [w.value for w in writes]
    assert received[4]["value"] == {"a": 3, "b": [1, 2], "c": True}
    assert received[5] == {**received[5], "value": None, "deleted": True, "key": "pub"}
    assert all(m["timestamp"] == w.timestamp for m, w in zip(received, writes, strict=False))


def test_delete_keeps_the_version_counter(sync_manager: SyncRedisStateManager) -> None:
    sync_manager.set_state("d", 1)
    sync_manager.set_state("d", 2)
    assert sync_manager.delete_state("d") is True
    assert sync_manager.delete_state("d") is False  # nothing left: no write, no publish
    assert sync_manager.get_state("d", default="gone") == "gone"
    assert sync_manager.get_state_versioned("d").version == 3
    assert sync_manager.set_state("d", 4).version == 4
    assert sync_manager.get_state_versioned("never").version == 0


def test_stale_compare_and_set_is_rejected(sync_manager: SyncRedisStateManager) -> None:
    assert sync_manager.compare_and_set("cas", "first", expected_version=0).version == 1
    with pytest.raises(VersionMismatchError) as caught:
        sync_manager.compare_and_set("cas", "from a stale reader", expected_version=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    assert sync_manager.get_state_versioned("cas")[:2] == ("first", 1)
    assert sync_manager.compare_and_set("cas", "second", expected_version=1).version == 2
    with pytest.raises(VersionMismatchError):
        sync_manager.increment_state("cas-n", {"n": 1}, expected_version=5)
    assert sync_manager.get_state_versioned("cas-n").version == 0


def test_update_state_atomic_gives_up_with_a_clear_conflict_error(
    sync_manager: SyncRedisStateManager, own_db_url: str
) -> None:
    other = SyncRedisStateManager(own_db_url)
    calls = 0

    def always_raced(current: Any) -> int:
        nonlocal calls
        calls += 1
        other.set_state("hot", calls)  # another writer wins between WATCH and EXEC
        return -1

    try:
        with pytest.raises(StateConflictError) as caught:
            sync_manager.update_state_atomic("hot", always_raced, max_retries=3)
    finally:
        other.close()
    assert caught.value.attempts == 4 and calls == 4
    assert sync_manager.get_state("hot") == 4  # only the other writer's values landed
    assert sync_manager.stats.watch_conflicts == 4


# --------------------------------------------------------------------------- Lua operations


def test_increment_merge_append_keep_json_exact(sync_manager: SyncRedisStateManager) -> None:
    sync_manager.set_state("o", {"empty": [], "obj": {}, "f": 0.1, "i": 7, "s": 'q"}],\\'})
    item = sync_manager.increment_state("o", {"f": 0.2, "i": 3, "new": 2, "g": 1.5})
    assert item.value == {"empty": [], "obj": {}, "f": 0.1 + 0.2, "i": 10, "s": 'q"}],\\', "new": 2, "g": 1.5}
    assert isinstance(item.value["i"], int) and isinstance(item.value["g"], float)
    assert sync_manager.increment_state("o", {"g": 0.5}).value["g"] == 2.0
    assert isinstance(sync_manager.get_state("o")["g"], float)
    merged = sync_manager.merge_state("o", {"obj": {"x": [None, True]}, "i": "now text"})
    assert merged.value["obj"] == {"x": [None, True]} and merged.value["i"] == "now text"
    assert list(merged.value)[:3] == ["empty", "obj", "f"]  # field order kept
    fills = None
    for n in range(5):
        fills = sync_manager.append_state("o", [{"fill": n}], field="empty", max_length=3)
    assert fills is not None and fills.value["empty"] == [{"fill": 2}, {"fill": 3}, {"fill": 4}]
    assert sync_manager.append_state("list", [1, [2]], max_length=2).value == [1, [2]]
    assert sync_manager.append_state("list", [3], max_length=2).value == [[2], 3]
    assert sync_manager.get_state_versioned("o").version == 9


def test_lua_operations_reject_values_they_do_not_fit(sync_manager: SyncRedisStateManager) -> None:
    sync_manager.set_state("t", {"s": "x", "big": 2**53 - 1})
    for op in (
        lambda: sync_manager.increment_state("t", {"s": 1}),
        lambda: sync_manager.increment_state("t", {"big": 1}),
        lambda: sync_manager.append_state("t", [1], field="s"),
        lambda: sync_manager.append_state("t", [1]),
    ):
        with pytest.raises(StateOperationError):
            op()
    sync_manager.set_state("text", "plain")
    with pytest.raises(StateOperationError):
        sync_manager.merge_state("text", {"a": 1})
    assert sync_manager.get_state_versioned("t").version == 1
    assert sync_manager.get_state_versioned("text").version == 1


def test_batch_update_is_all_or_nothing(sync_manager: SyncRedisStateManager, own_db_url: str) -> None:
    sync_manager.set_state("a", {"n": 1})
    sync_manager.set_state("b", "text", "other-ns")
    with pytest.raises(VersionMismatchError):
        sync_manager.batch_update(
            [
                StateOp.increment("a", {"n": 1}),
                StateOp.set("b", "x", "other-ns", expected_version=0),
            ]
        )
    with pytest.raises(StateOperationError):
        sync_manager.batch_update([StateOp.set("a", 5), StateOp.increment("b", {"n": 1}, "other-ns")])
    assert sync_manager.get_state_versioned("a")[:2] == ({"n": 1}, 1)
    assert sync_manager.get_state_versioned("b", "other-ns")[:2] == ("text", 1)

    queue = sync_manager.subscribe_state("c")
    assert queue.get(timeout=GET_TIMEOUT) == (None, 0, 0.0)
    items = sync_manager.batch_update(
        [
            StateOp.increment("a", {"n": 1}),
            StateOp.set("b", {"ready": True}, "other-ns", expected_version=1),
            StateOp.set("c", [1]),
            StateOp.append("c", [2]),
            StateOp.delete("a"),
        ]
    )
    assert [(i.value, i.version) for i in items] == [
        ({"n": 2}, 2),
        ({"ready": True}, 2),
        ([1], 1),
        ([1, 2], 2),
        (None, 3),
    ]
    assert len({i.timestamp for i in items}) == 1
    assert [i[:2] for i in _drain_until(queue, 2)] == [([1], 1), ([1, 2], 2)]


# --------------------------------------------------------------------------- validation

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.dictionaries(st.text(max_size=6), _json, max_size=5),
    patch=st.dictionaries(st.text(max_size=6), _json, max_size=4),
)
def test_merge_matches_python_for_any_json(
    redis_url: str, start: dict[str, Any], patch: dict[str, Any]
) -> None:
    manager = get_sync_state_manager(redis_url)
    key = _key()
    assert manager.set_state(key, start).value == start
    assert manager.get_state(key) == start
    merged = manager.merge_state(key, patch)
    assert merged.value == {**start, **patch} == manager.get_state(key)
    assert list(merged.value) == list({**start, **patch})
    assert manager.append_state(key, [patch], field="log", max_length=2).value["log"][-1] == patch
    manager.delete_state(key)


@pytest.mark.parametrize("bad_name", ["", "a b", "x" * 201, ":lead", "a{b}", "tab\t", "é", None])
def test_invalid_names_are_rejected(
    sync_manager: SyncRedisStateManager, redis_client: redis.Redis, bad_name: Any
) -> None:
    with pytest.raises(StateValidationError, match="invalid"):
        sync_manager.set_state(bad_name, 1)
    with pytest.raises(StateValidationError, match="invalid namespace"):
        sync_manager.set_state("ok", 1, namespace=bad_name if bad_name != "x" * 201 else "n" * 65)
    # nothing reached Redis
    assert redis_client.keys("hean:state*") == []


class _Opaque:
    pass


@pytest.mark.parametrize(
    "bad_value",
    [
        {1, 2},
        _Opaque(),
        float("nan"),
        {"x": float("inf")},
        {1: "int key"},
        b"bytes",
        {"deep": "\ud800"},
        "x" * MAX_VALUE_BYTES,
    ],
)
def test_unencodable_and_oversized_values_write_nothing(
    sync_manager: SyncRedisStateManager, redis_client: redis.Redis, bad_value: Any
) -> None:
    with pytest.raises(StateValidationError):
        sync_manager.set_state("v", bad_value)
    with pytest.raises(StateValidationError):
        sync_manager.update_state_atomic("v", lambda current: bad_value)
    with pytest.raises(StateValidationError):
        sync_manager.batch_update([StateOp.set("w", 1), StateOp.set("v", bad_value)])
    assert redis_client.keys("hean:state:*") == []


def test_size_limit_is_exact_and_enforced_server_side(sync_manager: SyncRedisStateManager) -> None:
    fits = "x" * (MAX_VALUE_BYTES - 2)  # two bytes of JSON quotes
    assert sync_manager.set_state("big", fits).version == 1
    with pytest.raises(StateValidationError, match="limit"):
        sync_manager.set_state("big", fits + "y")
    sync_manager.set_state("biglist", ["x" * (MAX_VALUE_BYTES - 100)])
    with pytest.raises(StateOperationError, match="limit"):
        sync_manager.append_state("biglist", ["y" * 200])
    assert sync_manager.get_state_versioned("biglist").version == 1
    for bad in ({"n": "1"}, {"n": True}, {"n": float("nan")}, {"n": 2**53}, {}):
        with pytest.raises(StateValidationError):
            sync_manager.increment_state("n", bad)
    with pytest.raises(StateValidationError):
        sync_manager.append_state("n", [1], max_length=0)
    assert sync_manager.get_state_versioned("n").version == 0


# --------------------------------------------------------------------------- faces & subscriptions


def test_async_and_sync_faces_interoperate(sync_manager: SyncRedisStateManager, own_db_url: str) -> None:
    sync_queue = sync_manager.subscribe_state("shared", "mixed")
    seen_by_callback: list[StateUpdate] = []
    watch = sync_manager.watch_state("shared", seen_by_callback.append, "mixed")

    async def run() -> list[StateItem]:
        manager = RedisStateManager(own_db_url)
        try:
            queue = await manager.subscribe_state("shared", "mixed")
            assert await queue.get() == (None, 0, 0.0)
            await manager.update_state_atomic("shared", lambda c: {"n": 1}, "mixed")
            sync_manager.increment_state("shared", {"n": 10}, "mixed")
            assert (await manager.get_state("shared", "mixed")) == {"n": 11}
            await manager.merge_state("shared", {"who": "async"}, "mixed")
            sync_manager.update_state_atomic("shared", lambda c: {**c, "n": c["n"] + 1}, "mixed")
            assert await manager.delete_state("shared", "mixed")
            await manager.set_state("shared", "back", "mixed", expected_version=5)
            items = []
            while not items or items[-1].version < 6:
                items.append(await asyncio.wait_for(queue.get(), GET_TIMEOUT))
            await manager.unsubscribe_state(queue)
            return items
        finally:
            await manager.aclose()

    async_items = asyncio.run(run())
    sync_items = _drain_until(sync_queue, 6)
    expected = [
        ({"n": 1}, 1),
        ({"n": 11}, 2),
        ({"n": 11, "who": "async"}, 3),
        ({"n": 12, "who": "async"}, 4),
        (None, 5),
        ("back", 6),
    ]
    assert [i[:2] for i in async_items] == expected
    assert [i[:2] for i in sync_items] == [(None, 0), *expected]
    watch.cancel()
    assert [(u.version, u.deleted) for u in seen_by_callback][-2:] == [(5, True), (6, False)]
    assert seen_by_callback[0] == StateUpdate("mixed", "shared", None, 0, 0.0, False)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_subscriber_resyncs_after_its_connection_is_killed(
    own_db_url: str, redis_client: redis.Redis, sync_manager: SyncRedisStateManager, face: str
) -> None:
    """Writes made while the pub/sub connection is down reach the subscriber by resync."""

    def kill_and_write() -> None:
        sync_manager.set_state("gap", {"n": 1})
        # only this test's database: the session's web process keeps its own pub/sub listener
        own_db = str(redis_client.connection_pool.connection_kwargs["db"])
        for client in redis_client.client_list(_type="pubsub"):
            if client["db"] == own_db:
                redis_client.client_kill_filter(_id=client["id"])
        for n in range(2, 6):
            sync_manager.set_state("gap", {"n": n})

    if face == "sync":
        subscriber = SyncRedisStateManager(own_db_url)
        queue = subscriber.subscribe_state("gap")
        kill_and_write()
        items = _drain_until(queue, 5)
        reconnects = subscriber.stats.reconnects
        subscriber.close()
    else:

        async def run() -> tuple[list[StateItem], int]:
            async with RedisStateManager(own_db_url) as subscriber:
                queue = await subscriber.subscribe_state("gap")
                await asyncio.to_thread(kill_and_write)
                got = []
                while not got or got[-1].version < 5:
                    got.append(await asyncio.wait_for(queue.get(), GET_TIMEOUT))
                return got, subscriber.stats.reconnects

        items, reconnects = asyncio.run(run())
    versions = [i.version for i in items]
    assert versions == sorted(set(versions)) and versions[-1] == 5
    assert items[-1].value == {"n": 5}
    assert reconnects >= 1


def test_unsubscribe_stops_delivery_and_resubscribe_works(sync_manager: SyncRedisStateManager) -> None:
    first = sync_manager.subscribe_state("u")
    second = sync_manager.subscribe_state("u")
    sync_manager.unsubscribe_state(first)
    sync_manager.set_state("u", 1)
    assert second.get(timeout=GET_TIMEOUT).version == 0
    assert second.get(timeout=GET_TIMEOUT).version == 1
    assert first.get(timeout=GET_TIMEOUT).version == 0 and first.empty()
    sync_manager.unsubscribe_state("u")
    again = sync_manager.subscribe_state("u")
    assert again.get(timeout=GET_TIMEOUT)[:2] == (1, 1)


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GET_TIMEOUT  # anti-hang only
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def _subscribers(redis_client: redis.Redis, channel: str) -> int:
    return int(dict(redis_client.pubsub_numsub(channel))[channel.encode()])


@pytest.mark.parametrize("face", ["sync", "async"])
def test_cancelling_a_watch_wakes_the_listener_in_both_faces(
    own_db_url: str, redis_client: redis.Redis, face: str
) -> None:
    """With no other traffic, the listener leaves the key's channel as soon as its watch is cancelled."""
    key = _key()
    channel = state_channel("global", key)
    seen: list[StateUpdate] = []

    def left_channel() -> None:
        _wait_until(lambda: _subscribers(redis_client, channel) == 0, f"the listener to leave {channel}")

    if face == "sync":
        with SyncRedisStateManager(own_db_url) as manager:
            watch = manager.watch_state(key, seen.append)
            assert _subscribers(redis_client, channel) == 1
            watch.cancel()
            left_channel()
            manager.set_state(key, 1)
    else:

        async def run() -> None:
            async with RedisStateManager(own_db_url) as manager:
                watch = await manager.watch_state(key, seen.append)
                assert _subscribers(redis_client, channel) == 1
                watch.cancel()
                await asyncio.to_thread(left_channel)  # the loop stays free for the listener
                await manager.set_state(key, 1)

        asyncio.run(run())
    assert [update.version for update in seen] == [0]  # nothing after the cancel


@pytest.mark.parametrize("face", ["sync", "async"])
def test_ending_a_subscription_ends_its_queue_in_both_faces(own_db_url: str, face: str) -> None:
    """unsubscribe_state or closing the manager wakes a waiting get(), which raises the documented
    end of stream once the queue has handed out what it held; iterating stops there."""
    key = _key()
    if face == "sync":
        manager = SyncRedisStateManager(own_db_url)
        queue = manager.subscribe_state(key)
        assert queue.get(timeout=GET_TIMEOUT).version == 0
        outcome: list[BaseException] = []

        def reader() -> None:
            try:
                queue.get(timeout=GET_TIMEOUT)
            except BaseException as exc:  # SubscriptionEndedError, or queue.Empty if never woken
                outcome.append(exc)

        waiting = threading.Thread(target=reader)
        waiting.start()
        time.sleep(0.05)  # let it block in get() first
        manager.unsubscribe_state(queue)
        waiting.join(GET_TIMEOUT + 5)
        assert [type(exc) for exc in outcome] == [SubscriptionEndedError]
        with pytest.raises(SubscriptionEndedError, match=key):
            queue.get(timeout=GET_TIMEOUT)  # every later get() too
        assert queue.empty() and list(queue) == []

        second = manager.subscribe_state(key)
        assert second.get(timeout=GET_TIMEOUT).version == 0
        manager.set_state(key, "last")
        _wait_until(lambda: second.qsize() > 0, "the update to arrive")
        manager.close()
        assert [item[:2] for item in second] == [("last", 1)]  # what it held, then the end
    else:

        async def run() -> None:
            manager = RedisStateManager(own_db_url)
            queue = await manager.subscribe_state(key)
            assert (await queue.get()).version == 0
            waiting = asyncio.create_task(queue.get())
            await asyncio.sleep(0.05)  # let it block in get() first
            await manager.unsubscribe_state(queue)
            with pytest.raises(SubscriptionEndedError, match=key):
                await asyncio.wait_for(waiting, GET_TIMEOUT)
            with pytest.raises(SubscriptionEndedError):
                await asyncio.wait_for(queue.get(), GET_TIMEOUT)  # every later get() too
            with pytest.raises(SubscriptionEndedError):
                queue.get_nowait()
            assert queue.empty() and [item async for item in queue] == []

            second = await manager.subscribe_state(key)
            assert (await second.get()).version == 0
            await manager.set_state(key, "last")
            while second.empty():
                await asyncio.sleep(0.01)  # bounded by the test's timeout
            await manager.aclose()
            assert [item[:2] async for item in second] == [("last", 1)]

        asyncio.run(asyncio.wait_for(run(), 60))


@pytest.mark.parametrize("face", ["sync", "async"])
def test_both_faces_reload_the_apply_script_when_the_server_lost_it(
    own_db_url: str, redis_client: redis.Redis, face: str
) -> None:
    """Both run the core's script the same way: by SHA, loading it on NOSCRIPT (Lua and WATCH paths)."""
    key = _key()
    if face == "sync":
        with SyncRedisStateManager(own_db_url) as manager:
            redis_client.script_flush()
            assert manager.set_state(key, 1).version == 1
            redis_client.script_flush()
            assert manager.update_state_atomic(key, lambda n: n + 1) == (2, 2)
    else:

        async def run() -> None:
            async with RedisStateManager(own_db_url) as manager:
                redis_client.script_flush()
                assert (await manager.set_state(key, 1)).version == 1
                redis_client.script_flush()
                assert await manager.update_state_atomic(key, lambda n: n + 1) == (2, 2)

        asyncio.run(run())
    assert redis_client.script_exists(schema.APPLY_SCRIPT.sha) == [True]


def test_shared_managers_are_per_loop_and_per_process(redis_url: str) -> None:
    async def pick() -> RedisStateManager:
        manager = await get_redis_state_manager(redis_url)
        assert manager is await get_redis_state_manager(redis_url)
        await manager.set_state("loop", 1)
        await manager.aclose()
        return manager

    assert asyncio.run(pick()) is not asyncio.run(pick())
    assert get_sync_state_manager(redis_url) is get_sync_state_manager(redis_url)


EVENTLET_SCRIPT = textwrap.dedent("""
    import eventlet
    eventlet.monkey_patch()
    import json, sys, time
    from hean.core.system.redis_state import SyncRedisStateManager

    url = sys.argv[1]
    manager = SyncRedisStateManager(url)
    seen = []
    manager.watch_state("web", lambda update: seen.append(update.version), "ev")
    queue = manager.subscribe_state("web", "ev")
    first = queue.get(timeout=10)
    ticks = []
    ticker = eventlet.spawn(lambda: [ticks.append(eventlet.sleep(0.01)) for _ in range(50)])
    time.sleep(6)  # idle longer than redis-py 8's default 5 s socket timeout
    writer = eventlet.spawn(lambda: [manager.increment_state("web", {"n": 1}, "ev")
                                     for _ in range(20)])
    items = [queue.get(timeout=10) for _ in range(20)]
    writer.wait()
    ticker.wait()
    print(json.dumps({"first": first.version, "versions": [i.version for i in items],
                      "callback": seen, "ticks": len(ticks),
                      "reconnects": manager.stats.reconnects}))
    manager.close()
""")


def test_sync_face_under_eventlet_survives_idle_and_does_not_block_the_hub(
    own_db_url: str, redis_client: redis.Redis, repo_root: Path
) -> None:
    report = child_report(EVENTLET_SCRIPT, own_db_url, cwd=repo_root, timeout=60)
    assert report["first"] == 0
    assert report["versions"] == list(range(1, 21))
    assert report["callback"] == list(range(0, 21))
    assert report["ticks"] == 50
    assert report["reconnects"] == 0


def test_names_and_channels_are_documented_constants() -> None:
    assert schema.MAX_VALUE_BYTES == 1024 * 1024
    assert schema.NAMESPACE_RE.match("global") and schema.KEY_RE.match("orders/BTC-USD:1m")
