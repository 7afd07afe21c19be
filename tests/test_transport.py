"""workers.transport's channel keeps one Redis client per pool, and messages still flow."""

from __future__ import annotations

import redis
from kombu import Connection, Queue

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
