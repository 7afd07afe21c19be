"""The web process's message-queue listener (web/bus.py): on a real Redis, and how it reads messages."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import redis

from hean import fastjson
from hean.messages import BULK_METHOD, PACKET_METHOD
from web.bus import FanOutRedisManager, decode_message


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


def refuse(raw: Any) -> Any:
    raise AssertionError("the digit scan was not needed")


BIG = "123456789012345678901234567890"
PACKET = {"method": PACKET_METHOD, "packet": f'2["command_result",{{"n":{BIG},"x":1.5}}]', "room": "s1",
          "request_id": "r-1"}  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        PACKET,
        {**PACKET, "room": ["s1", "s2"]},
        {**PACKET, "room": None, "request_id": None},
        {"method": BULK_METHOD, "messages": [PACKET, {**PACKET, "packet": "2[]"}]},
    ],
)
def test_a_workers_packet_message_is_read_without_the_digit_scan(message: dict[str, Any]) -> None:
    raw = json.dumps(message).encode()
    assert decode_message(raw, refuse) == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({**PACKET, "extra": int(BIG)}),  # a number: orjson would read it as a float
        json.dumps({"method": BULK_METHOD, "messages": [PACKET, {"method": "emit", "data": [int(BIG)]}]}),
        json.dumps({"method": "emit", "event": "state_update", "data": {"version": int(BIG)}}),
        '{"method": "hean_packet", "packet": "2[]", "room": NaN}',
        json.dumps([PACKET]),
        '"\\ud800"',
    ],
)
def test_any_other_message_is_read_as_the_standard_library_reads_it(raw: str) -> None:
    got = decode_message(raw.encode(), fastjson.loads)
    assert json.dumps(got) == json.dumps(json.loads(raw))  # NaN compares by its text


@pytest.mark.parametrize("raw", [b"{", b"\xff", b""])
def test_a_message_that_is_not_json_raises_as_the_standard_library_does(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(raw, fastjson.loads)
