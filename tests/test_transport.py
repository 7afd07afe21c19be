"""workers.transport's channel keeps one Redis client per pool, and messages still flow."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from workers.transport import Transport


def test_a_channel_reuses_one_client_per_pool_and_still_delivers(
    own_db_url: str, redis_client: redis.Redis
) -> None:
    with Connection(own_db_url, transport=Transport) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = redis.Redis.from_url(own_db_url)
        with channel.conn_or_acquire(given) as passed:
            assert passed is given  # a client handed in is used as it is
        given.close()

        queue = Queue("transport-test", routing_key="transport-test")
        with connection.Producer() as producer:
            for i in range(5):
                producer.publish({"i": i}, routing_key="transport-test", declare=[queue])
        received: list[int] = []
        with connection.SimpleQueue(queue) as simple:
            for _ in range(5):
                message = simple.get(timeout=5)
                received.append(message.payload["i"])
                message.ack()
        assert received == list(range(5))

        channel._disconnect_pools()  # what closing after a lost connection does
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()


def test_fast_reading_gives_kombus_values(own_db_url: str, redis_client: redis.Redis) -> None:
    """Messages as kombu and Celery write them (typed values included) read the same."""
    import datetime
    import decimal
    import uuid

    from kombu.transport import redis as kombu_redis
    from kombu.utils import json as kombu_json

    from workers.transport import loads

    assert kombu_redis.loads is loads  # installed for the transport's reads
    bodies: list[object] = [
        {"envelopes": [{"request_id": "r", "params": {"orders": [{"quantity": "0.1"}] * 3}}]},
        [[{"a": 1}], {}, {"callbacks": None, "chain": None}],
        {
            "when": datetime.datetime(2026, 12, 2, 8, 0, tzinfo=datetime.UTC),
            "d": decimal.Decimal("1.5"),
            "u": uuid.UUID(int=7),
            "big": 2**70,
        },
        "text ✓",
    ]
    for body in bodies:
        text = kombu_json.dumps(body)
        for data in (text, text.encode(), bytearray(text.encode()), memoryview(text.encode())):
            assert loads(data) == kombu_json.loads(data)
    # a real message off the queue, written by kombu's producer, read by the transport
    with Connection(own_db_url, transport=Transport) as connection:
        queue = Queue("transport-read", routing_key="transport-read")
        with connection.Producer() as producer:
            producer.publish(bodies[2], routing_key="transport-read", declare=[queue], serializer="json")
        with connection.SimpleQueue(queue) as simple:
            message = simple.get(timeout=5)
            assert message.payload == bodies[2]
            message.ack()


def test_a_delivery_cut_short_by_a_stopping_worker_keeps_its_message(own_db_url: str) -> None:
    """The atomic pop moved the message into its delivering list; the worker stops (Celery's
    hard shutdown raises WorkerTerminate, a SystemExit, wherever the consumer is) before the
    delivery recorded it: the message must stay there and come back to the next consumer, not
    be removed as a delivery without a record."""
    from hean.celery_wire import delivering_key

    name = "atomic-stop-test"
    options = {"hean_atomic_queues": [name]}
    client = redis.Redis.from_url(own_db_url)
    try:
        with Connection(own_db_url, transport=Transport, transport_options=options) as connection:
            queue = Queue(name, routing_key=name)
            with connection.Producer() as producer:
                producer.publish({"order": 1}, routing_key=name, declare=[queue])
            channel = connection.default_channel

            def stop(*_: object, **__: object) -> None:
                raise SystemExit(1)

            channel.Message = stop  # raised before the delivery is recorded
            with connection.Consumer(queue, callbacks=[lambda body, message: message.ack()]):
                try:
                    connection.drain_events(timeout=5)
                    raise AssertionError("the delivery was not interrupted")
                except SystemExit:
                    pass
        assert client.llen(name) == 0
        assert client.llen(delivering_key(name)) == 1  # held, not dropped

        received: list[object] = []
        with Connection(own_db_url, transport=Transport, transport_options=options) as connection:
            queue = Queue(name, routing_key=name)

            def take(body: object, message: object) -> None:
                received.append(body)
                message.ack()  # type: ignore[attr-defined]

            with connection.Consumer(queue, callbacks=[take]):
                connection.drain_events(timeout=5)
        assert received == [{"order": 1}]
        assert client.llen(delivering_key(name)) == 0
    finally:
        client.close()


def test_an_atomic_queues_consumer_puts_back_what_it_was_not_delivered_and_waits_out_a_full_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is full, BLMOVE (it may create the delivering list) is refused: the consumer
    says so, waits and pops again, where kombu stopped the worker. A message another consumer
    popped into the list (a replaced engine worker) goes back to the queue at the one consumer's
    next check, and is delivered to it once Redis has room."""
    from hean.celery_wire import delivering_key
    from hean.redis_server import PrivateRedis
    from workers import transport

    monkeypatch.setattr(transport, "STRAYS_CHECKED_EVERY_S", 0.0)
    name = "atomic-stray-test"
    options = {"hean_atomic_queues": [name]}
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        with Connection(server.url, transport=Transport, transport_options=options) as connection:
            queue = Queue(name, routing_key=name)
            with connection.Producer() as producer:
                producer.publish({"order": 1}, routing_key=name, declare=[queue])
            assert client.lmove(name, delivering_key(name), "RIGHT", "LEFT") is not None  # another's pop
            received: list[object] = []

            def take(body: object, message: object) -> None:
                received.append(body)
                message.ack()  # type: ignore[attr-defined]

            client.config_set("maxmemory", 1)  # below what it holds: full
            with connection.Consumer(queue, callbacks=[take]), caplog.at_level(logging.WARNING):
                with pytest.raises(socket.timeout):
                    connection.drain_events(timeout=1.5)
                # put back (Redis runs the script: it frees as much as it adds), not popped
                assert received == [] and client.llen(delivering_key(name)) == 0 and client.llen(name) == 1
                said = [record.getMessage() for record in caplog.records]
                assert "event=delivering_restored queue=atomic-stray-test messages=1" in said, said
                assert any(
                    line.startswith("event=pop_refused") and "reason=redis_out_of_memory" in line
                    for line in said
                ), said
                client.config_set("maxmemory", server.maxmemory)
                connection.drain_events(timeout=5)
                said = [record.getMessage() for record in caplog.records]
                assert any(line.startswith("event=pop_recovered") for line in said), said
        assert received == [{"order": 1}]
        assert client.llen(delivering_key(name)) == 0 and client.llen(name) == 0
        client.close()


def test_a_refused_binding_refresh_is_logged_once_not_every_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kombu refreshes an expiring queue's binding with a script, every cycle while it fails; a
    full Redis refuses it (BRPOP it still runs). The refusal is one line, then one every 10 s,
    and a recovered line: kombu logged each with its traceback, about 25 lines a second."""
    from hean.redis_server import PrivateRedis

    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        with Connection(server.url, transport=Transport) as connection:
            exchange = Exchange("expiring-test", type="direct")  # a binding table, as Celery's pidbox has
            queue = Queue("expiring-test", exchange=exchange, routing_key="expiring-test", expires=30.0)
            with connection.Consumer(queue, callbacks=[lambda body, message: message.ack()]):
                channel = connection.default_channel
                client.config_set("maxmemory", 1)  # below what it holds: full
                with caplog.at_level(logging.WARNING):
                    for _ in range(3):  # kombu's poller calls it every cycle while it fails
                        channel._binding_expiry_refreshed_at = 0.0
                        channel.maybe_refresh_binding_expiry()
                    client.config_set("maxmemory", server.maxmemory)
                    channel._binding_expiry_refreshed_at = 0.0
                    channel.maybe_refresh_binding_expiry()
        said = [record.getMessage() for record in caplog.records]
        assert said == [
            "event=binding_refresh_refused error=OutOfMemoryError action=retry failures=1",
            "event=binding_refresh_recovered failures=3",
        ], said
        client.close()


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "brpop"])
def test_a_consumer_waits_out_a_redis_that_cannot_persist(
    atomic: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis whose snapshot failed (a full disk; `stop-writes-on-bgsave-error`, as an external
    Redis saving RDB snapshots has by default) refuses writes with MISCONF, BLMOVE and BRPOP
    among them: the consumer waits and pops again, and gets the message once Redis can persist
    again. A BRPOP consumer (the pulse, llm and default queues) stopped its worker before."""
    import subprocess
    import time

    from hean.redis_server import free_port, server_binary

    port = free_port()
    # `dir` is a protected config: this server lets it be set, to make its next save fail
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "dir": str(tmp_path)}
    options["enable-protected-configs"] = "yes"
    server = subprocess.Popen(
        [str(server_binary()), *(part for k, v in options.items() for part in (f"--{k}", v))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    name = "atomic-misconf-test" if atomic else "brpop-misconf-test"

    def save_into(directory: str, status: str) -> None:
        client.config_set("dir", directory)
        client.bgsave()
        deadline = time.monotonic() + 10
        while client.info("persistence")["rdb_bgsave_in_progress"] or (
            client.info("persistence")["rdb_last_bgsave_status"] != status
        ):
            assert time.monotonic() < deadline, f"the save did not end {status}"
            time.sleep(0.05)

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        options = {"hean_atomic_queues": [name]} if atomic else {}
        with Connection(url, transport=Transport, transport_options=options) as connection:
            queue = Queue(name, routing_key=name)
            with connection.Producer() as producer:
                producer.publish({"order": 1}, routing_key=name, declare=[queue])
            received: list[object] = []

            def take(body: object, message: object) -> None:
                received.append(body)
                message.ack()  # type: ignore[attr-defined]

            client.config_set("save", "3600 1")
            save_into("/proc", "err")  # no file can be made there: writes refused from now on
            with connection.Consumer(queue, callbacks=[take]), caplog.at_level(logging.WARNING):
                with pytest.raises(socket.timeout):
                    connection.drain_events(timeout=1.5)
                assert received == [] and client.llen(name) == 1
                said = [record.getMessage() for record in caplog.records]
                assert any(
                    line.startswith("event=pop_refused") and "reason=redis_cannot_persist" in line
                    for line in said
                ), said
                save_into(str(tmp_path), "ok")
                connection.drain_events(timeout=5)
                said = [record.getMessage() for record in caplog.records]
                assert f"event=pop_recovered queue={name} failures=" in " ".join(said), said
        assert received == [{"order": 1}]
    finally:
        client.close()
        server.kill()
        server.wait(timeout=10)
