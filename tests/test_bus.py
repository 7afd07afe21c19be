"""The web process's message-queue listener (web/bus.py) on a real Redis."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from web.bus import FanOutRedisManager


def test_the_listener_takes_big_messages_without_stringifying_them(
    own_db_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # redis-py 8.1's default handler logs str(message) at DEBUG, building it at every level
    # (redis/redis-py#4230); the listener's own handler hands the message on untouched.
    manager = FanOutRedisManager(own_db_url, channel="bus-test", redis_options={"socket_timeout": None})
    manager._redis_connect()
    payload = b'{"method":"packet","packet":"2[\\"command_result\\"]"}' + b" " * 50_000
    caplog.set_level(logging.DEBUG, logger="push_response")
    try:
        manager.pubsub.subscribe("bus-test")
        deadline = time.monotonic() + 5
        while redis_client.publish("bus-test", payload) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the subscription is in place
        message = None
        while message is None and time.monotonic() < deadline:
            message = manager.pubsub.get_message(timeout=1)
        assert message is not None and message["type"] == "message" and message["data"] == payload
        assert not [r for r in caplog.records if r.name == "push_response"]
    finally:
        manager.pubsub.close()
        manager.redis.close()
