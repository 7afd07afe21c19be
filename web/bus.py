"""The web process's end of the Socket.IO message queue (Redis pub/sub), and where a command's
result goes when its sender reconnected and sent it again."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet

from hean.db import describe_error
from hean.logs import FailureLog
from hean.messages import BULK_METHOD, PACKET_METHOD

log = logging.getLogger(__name__)

#: Most request ids `ResultRoutes` remembers (oldest forgotten first): a client that resent more
#: commands than this, all still queued, gets the oldest ones' results by asking once more.
MAX_ROUTES = 100_000
#: How soon the web process subscribes again to the Socket.IO message queue after losing it
#: (FanOutRedisManager._redis_listen_with_retries): sooner than a worker reconnects to the
#: broker (workers.app.BROKER_RETRY_START_S), so that the results of the commands it takes after
#: a Redis restart find the web process listening. An attempt is one refused connect.
LISTEN_RETRY_S = 0.25


class ResultRoutes:
    """Request ids sent again by a newer connection than the one that first sent them.

    A worker sends a command's result to the sid in its envelope: the connection that first
    sent it. A client that reconnected (the web process restarted, or its network blinked) and
    resent the command with the same request id is another sid, so the web process sends the
    result to the newest sender as well, once; the operators room gets it as before.
    """

    def __init__(self, limit: int = MAX_ROUTES) -> None:
        self._limit = limit
        self._to: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._to)

    def add(self, request_id: str, sid: str) -> None:
        """Send `request_id`'s result to `sid` too (the latest call wins)."""
        with self._lock:
            self._to[request_id] = sid
            self._to.move_to_end(request_id)
            while len(self._to) > self._limit:
                self._to.popitem(last=False)

    def take(self, request_id: str) -> str | None:
        """The sid that must also get `request_id`'s result, forgotten once taken."""
        if not self._to:  # the usual case: nothing was resent
            return None
        with self._lock:
            return self._to.pop(request_id, None)

    def forget_sid(self, sid: str) -> None:
        """`sid` disconnected: a later resend names its new sid."""
        with self._lock:
            for request_id in [rid for rid, to in self._to.items() if to == sid]:
                del self._to[request_id]

    def route(self, message: dict[str, Any]) -> dict[str, Any]:
        """`message` (a worker's packet message, or a python-socketio pub/sub emit) with the
        newest sender of its command added to its rooms, if a `command_result` was resent by
        another connection. Packet messages name their result's request id (workers/emit.py),
        so nothing is decoded for this."""
        if not self._to:
            return message
        if message.get("method") == PACKET_METHOD:
            request_id = message.get("request_id")
        elif message.get("event") == "command_result":
            data = message.get("data")
            result = data[0] if isinstance(data, list) and data else data
            request_id = result.get("request_id") if isinstance(result, dict) else None
        else:
            return message
        sid = self.take(request_id) if isinstance(request_id, str) else None
        if sid is None:
            return message
        room = message.get("room")
        rooms = [room] if isinstance(room, str) else list(room or [])
        # sent to the union of the rooms' participants: a sid in two of them gets it once
        return dict(message, room=[*rooms, sid])


def _text(value: Any) -> bool:
    return value is None or type(value) is str or (type(value) is list and all(type(v) is str for v in value))


def _packets_of_text(data: Any) -> bool:
    """Whether `data` is a worker's packet message (workers/emit.py), or a bulk message of them,
    whose every value is text (or None, or a list of text): no number anywhere."""
    if type(data) is not dict:
        return False
    if data.get("method") == PACKET_METHOD:
        return _packet_of_text(data)
    messages = data.get("messages")
    return (
        data.get("method") == BULK_METHOD
        and len(data) == 2
        and type(messages) is list
        and all(_packet_of_text(message) for message in messages)
    )


def _packet_of_text(message: Any) -> bool:
    return (
        type(message) is dict and message.get("method") == PACKET_METHOD and all(map(_text, message.values()))
    )


def decode_message(raw: bytes | str, loads: Callable[[Any], Any]) -> Any:
    """`loads(raw)` (the manager's JSON module: hean.fastjson), by orjson alone for the workers'
    packet messages. hean.fastjson scans the whole text for runs of digits before trusting orjson
    with numbers; a result message of 100 orders (~20 KB) took longer to scan than to parse. A
    document with no number in it is read alike by orjson and the standard library, so the scan
    is only needed when orjson's answer is not all text (or orjson refused the text)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return loads(raw)
    return data if _packets_of_text(data) else loads(raw)


def _as_is(message: Any) -> Any:
    return message


class FanOutRedisManager(socketio.RedisManager):
    """python-socketio's RedisManager that also reads the workers' bulk messages.

    A worker publishes a batch's results as one message (workers/emit.py); this listener
    decodes it once and hands its emits to python-socketio one by one, yielding to other
    greenlets between them, so a burst of 500 results never holds up a client's command.
    Results of commands a client sent again from a new connection also go to that connection
    (`routes`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes = ResultRoutes()

    def _redis_connect(self) -> None:
        super()._redis_connect()
        # redis-py 8.1's own handler of RESP3 pub/sub messages builds a debug line from the whole
        # message before calling logger.debug, whatever the level (redis/redis-py#4230, fixed
        # upstream after 8.1.0): in 100-order commands, str() of the results was a tenth of the
        # web process's CPU. This one hands each message on as it is.
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True, push_handler_func=_as_is)

    def _redis_listen_with_retries(self) -> Iterator[Any]:
        """python-socketio's listener, subscribing again every LISTEN_RETRY_S while Redis is
        away. Its own waited 1 s, then twice as long each time up to 60 s: after a 20 s outage
        it subscribed again 11 s after Redis was back, and every result published meanwhile was
        lost to the clients waiting for it (they have it only by sending the command again)."""
        failures = FailureLog(log)
        subscribed = False
        while True:
            try:
                if not subscribed:
                    self._redis_connect()
                    self.pubsub.subscribe(self.channel)
                    subscribed = True
                    failures.recovered("event=result_listener_subscribed channel=%s", self.channel)
                yield from self.pubsub.listen()
            except Exception as exc:  # whatever the connection raised: subscribe afresh
                failures.failed("event=result_listener_failed error=%s", describe_error(exc))
                subscribed = False
                time.sleep(LISTEN_RETRY_S)

    def _listen(self) -> Iterator[Any]:
        for raw in super()._listen():
            try:
                data = decode_message(raw, self.json.loads)
            except ValueError:
                continue  # not a Socket.IO message; python-socketio ignores these too
            if not isinstance(data, dict):
                continue
            if data.get("method") == PACKET_METHOD:
                self._send_packet(self.routes.route(data))
                continue
            if data.get("method") != BULK_METHOD:
                yield self.routes.route(data)
                continue
            messages = data.get("messages")
            for message in messages if isinstance(messages, list) else ():
                if not isinstance(message, dict):
                    continue
                if message.get("method") == PACKET_METHOD:
                    self._send_packet(self.routes.route(message))
                else:
                    yield self.routes.route(message)
                self.server.sleep(0)

    def _send_packet(self, message: dict[str, Any]) -> None:
        """Send a worker's encoded Socket.IO packet (workers/emit.py `packet_message`) to the
        room's (or rooms') participants on this server, as python-socketio's own emit does."""
        packet, room = message.get("packet"), message.get("room")
        if not (isinstance(packet, str) and packet.startswith("2")):
            return
        if not (
            room is None
            or isinstance(room, str)
            or (isinstance(room, list) and all(isinstance(r, str) for r in room))
        ):
            return
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, packet)
        for _, eio_sid in self.get_participants("/", room):
            self.server._send_eio_packet(eio_sid, eio_pkt)
