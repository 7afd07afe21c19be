"""Write-only Socket.IO emitter: workers reach browsers through the Redis message queue."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import socketio

from hean import fastjson
from hean.config import get_settings
from hean.messages import BULK_METHOD, PACKET_METHOD


class BufferedRedisManager(socketio.RedisManager):
    """The workers' write-only RedisManager, with one message for many emits.

    python-socketio publishes one message per emit (one round trip each, and one message for
    the web process to parse); a batch of results should cost one of each, inside the batch's
    own transaction (:func:`publish_on`): several emits go out as one BULK_METHOD message, which
    the web process's manager (web/bus.py) fans out.
    """

    def encode(self, messages: list[Any]) -> bytes:
        """The pub/sub payload carrying `messages` (one message, or one bulk message)."""
        bulk = messages[0] if len(messages) == 1 else {"method": BULK_METHOD, "messages": messages}
        return fastjson.dumpb(bulk)


@functools.cache
def _manager() -> BufferedRedisManager:
    settings = get_settings()
    # Same channel as the web process's manager (web/app.py), or messages go nowhere.
    return BufferedRedisManager(
        settings.effective_redis_url(), channel=settings.socketio_channel, write_only=True, json=fastjson
    )


def emit(event: str, data: Any, to: str | list[str] | None = None, namespace: str = "/") -> None:
    """Send `event` to clients and rooms (sids or room names), or with `to=None` to everyone."""
    _manager().emit(event, data, namespace=namespace, room=to)


def packet_message(event: str, data: Any, to: str | list[str] | None) -> dict[str, Any]:
    """An emit whose Socket.IO packet (namespace "/", no ack id) is encoded here, once: the web
    process (web/bus.py) sends it as it is. Decoding a result's data from the queue and encoding
    it again into a packet cost the web process a tenth of its CPU per order, and python-socketio's
    generic emit (a walk of the data looking for bytes) as much again in the engine worker.
    tests/test_emit.py holds the packet equal to the one python-socketio builds. A result's
    message also names its request id."""
    message = {"method": PACKET_METHOD, "packet": "2" + fastjson.dumps([event, data]), "room": to}
    if event == "command_result" and isinstance(data, dict):
        # the web process also sends a result to the client that resent its command last
        # (web/bus.py ResultRoutes): by this id, without decoding the packet
        message["request_id"] = data.get("request_id")
    return message


def publish_on(pipe: Any, emits: Sequence[tuple[str, Any, str | list[str] | None]]) -> None:
    """Queue `emits` (event, data as JSON values, to) on `pipe` as one pub/sub message, so
    they are published exactly when, and only if, the pipeline's transaction commits."""
    if not emits:
        return
    manager = _manager()
    messages = [packet_message(event, data, to) for event, data, to in emits]
    pipe.publish(manager.channel, manager.encode(messages))
