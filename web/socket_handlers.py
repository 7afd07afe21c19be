"""Socket.IO handlers: token-checked connections, the `command` control channel, and rooms."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet
from flask import request
from flask_socketio import SocketIO, join_room
from socketio.exceptions import ConnectionRefusedError as Refused

from hean import fastjson
from hean.auth import ensure_token, token_matches
from hean.config import Settings
from hean.core.system.redis_state import (
    DEFAULT_NAMESPACE,
    KEY_RE,
    NAMESPACE_RE,
    StateError,
    StateUpdate,
    StateValidationError,
    StateWatch,
    SyncRedisStateManager,
    get_sync_state_manager,
)
from hean.messages import OPERATORS_ROOM, CommandAck, ErrorInfo, new_request_id
from web.bus import ResultRoutes
from web.error_reports import report_handler_error
from web.intake import CommandIntake, Outcome

log = logging.getLogger(__name__)

Handler = Callable[..., Any]

#: State subscriptions one connection may hold at once. Each costs the web process about 3.6 KB
#: and Redis a channel (5,000 took 18 MB of the web's memory, measured); the console holds a few.
MAX_SUBSCRIPTIONS = 1000


class TokenBucket:
    """Per-connection rate limit: `rate` events per second, bursts up to `burst`."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.updated = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        """Refilled to its burst by `now`: the same as a new bucket."""
        return self.tokens + (now - self.updated) * self.rate >= self.burst


class AddressBuckets:
    """A TokenBucket per client address (REST), at most about `most` of them: past that, the
    refilled ones are dropped (a new bucket is the same), and only if every one is in use are
    all dropped. Clearing all at once let a client that spoke from `most` addresses reset every
    other client's limit."""

    def __init__(self, rate: float, burst: int, most: int = 10_000) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> bool:
        with self._lock:
            bucket = self._buckets.get(address)
            if bucket is None:
                if len(self._buckets) >= self.most:
                    now = time.monotonic()
                    self._buckets = {a: b for a, b in self._buckets.items() if not b.full(now)}
                    if len(self._buckets) >= self.most:
                        self._buckets.clear()
                bucket = self._buckets[address] = TokenBucket(self.rate, self.burst)
            return bucket.take()


def _sid() -> str:
    return request.sid  # type: ignore[attr-defined]  # Flask-SocketIO sets sid on the request


def ack_packets(ack_id: int | None, ack: dict[str, Any]) -> list[str]:
    """A command's ack as Socket.IO packets (namespace "/"): the ack value for `ack_id` (if the
    client asked for one), then the `command_ack` event; the ack encoded once. python-socketio's
    own packets walk the data looking for bytes and encode it for each, a seventh of the web
    process's CPU per lone order; tests/test_socket_packets.py holds these equal to them."""
    encoded = fastjson.dumps(ack)
    event = f'2["command_ack",{encoded}]'
    return [event] if ack_id is None else [f"3{ack_id}[{encoded}]", event]


def state_payload(update: StateUpdate) -> dict[str, Any]:
    """The `state_update` event for one change (the DESIGN.md contract)."""
    return {
        "namespace": update.namespace,
        "key": update.key,
        "value": update.value,
        "version": update.version,
        "timestamp": update.timestamp,
    }


def _state_error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"subscribed": False, "error": {"code": code, "message": message, "field": field}}


def _state_target(data: Any) -> tuple[str, str] | dict[str, Any]:
    """(namespace, key) from a `{key, namespace}` payload, or an error reply."""
    if not isinstance(data, dict):
        return _state_error("invalid_payload", "expected an object {key, namespace}")
    key, namespace = data.get("key"), data.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(key, str) or not KEY_RE.match(key):
        return _state_error("invalid_params", f"key must match {KEY_RE.pattern}", "key")
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        return _state_error("invalid_params", f"namespace must match {NAMESPACE_RE.pattern}", "namespace")
    return namespace, key


def state_manager() -> SyncRedisStateManager:
    return get_sync_state_manager()


def register(
    sio: SocketIO, settings: Settings, intake: CommandIntake, routes: ResultRoutes | None = None
) -> Callable[[], int]:
    """Install the handlers; returns a function that counts the connected clients.

    `routes` (the message queue listener's, web/bus.py) learns which connection sent a command
    again, so that its result reaches that connection rather than only the first sender's."""
    routes = routes if routes is not None else ResultRoutes()
    token = ensure_token(settings)

    def on(event: str) -> Callable[[Handler], Handler]:
        """Register a handler that first yields to other connections' greenlets.

        With async_handlers off, a connection's reader greenlet runs its events one after
        another; eventlet sockets only yield when they would block, so a client with a full
        receive buffer would otherwise hold the hub until its backlog is drained.
        """

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            def fair(*args: Any) -> Any:
                sio.sleep(0)
                return handler(*args)

            # Straight on python-socketio's server: these handlers need no Flask request
            # context, and building one per event costs about as much as the handler itself.
            server.on(event, fair, namespace="/")
            return handler

        return decorate

    server = sio.server
    buckets: dict[str, TokenBucket] = {}
    watches: dict[str, dict[tuple[str, str], StateWatch]] = {}

    def rate_limited(sid: str, data: Any) -> dict[str, Any] | None:
        bucket = buckets.get(sid)
        if bucket is None or bucket.take():
            return None
        raw_id = data.get("request_id") if isinstance(data, dict) else None
        return CommandAck(
            request_id=raw_id if isinstance(raw_id, str) and raw_id else new_request_id(),
            command=data.get("command")
            if isinstance(data, dict) and isinstance(data.get("command"), str)
            else None,
            accepted=False,
            ack_time_ms=0.0,
            error=ErrorInfo(
                code="rate_limited",
                message=f"more than {settings.command_rate:g} commands/s on this connection; slow down",
            ),
        ).model_dump(mode="json")

    @sio.on("connect")
    def on_connect(auth: Any = None) -> None:
        supplied = auth.get("token") if isinstance(auth, dict) else None
        if not token_matches(token, supplied):
            log.warning("event=connect_refused sid=%s reason=unauthorized", _sid())
            raise Refused("unauthorized: connect with auth={'token': <HEAN token>}")
        buckets[_sid()] = TokenBucket(settings.command_rate, settings.command_burst)
        if isinstance(auth, dict) and auth.get("operator") is True:
            join_room(OPERATORS_ROOM)

    @sio.on("disconnect")
    def on_disconnect(*_: Any) -> None:
        buckets.pop(_sid(), None)
        for watch in watches.pop(_sid(), {}).values():
            watch.cancel()
        if len(routes):
            routes.forget_sid(_sid())

    def deliver(sid: str, eio_sid: str, ack_id: int | None, outcome: Outcome) -> None:
        """The ack as the Socket.IO ack value and as `command_ack` event (then, for a repeated
        request id, the original result). Own client only: no Redis hop. The ack value goes
        first: a client waiting in `call()` is answered by the first frame."""
        for packet in ack_packets(ack_id, outcome.ack):
            server._send_eio_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, packet))
        if outcome.earlier_result is not None:
            server.emit("command_result", outcome.earlier_result, to=sid, ignore_queue=True)
        elif outcome.ack.get("duplicate") and outcome.ack.get("accepted"):
            follow_result(sid, outcome.ack["request_id"])

    def follow_result(sid: str, request_id: str) -> None:
        """A command sent again before it ran (typically after a reconnect): its result, sent
        to the first sender's sid, goes to this connection too. It may have been published
        between the journal read that found no result and this route: read it once more."""
        routes.add(request_id, sid)

        def recheck() -> None:
            try:
                result = intake.stored_result(request_id)
            except Exception as exc:  # Redis away: the route stands, the client may ask again
                log.warning("event=result_recheck_failed request_id=%s error=%s", request_id, exc)
                return
            if result is not None and routes.take(request_id) is not None:
                server.emit("command_result", result, to=sid, ignore_queue=True)

        sio.start_background_task(recheck)

    def on_command(sid: str, eio_sid: str, data: Any, ack_id: int | None) -> None:
        """A `command` event. It is acked when the writer has enqueued it, and the connection
        reads its next event meanwhile: a client's commands share the writer's batches."""
        sio.sleep(0)  # fairness, as for every handler (see `on`)
        ack = rate_limited(sid, data)
        if ack is not None:
            deliver(sid, eio_sid, ack_id, Outcome(ack))
            return
        intake.submit(data, reply_to=sid, done=functools.partial(deliver, sid, eio_sid, ack_id))

    # python-socketio acks an event with its handler's return value, so a handler that
    # returns early cannot ack later; `command` events are taken before that step instead.
    default_event = server._handle_event_internal

    def handle_event(srv: Any, sid: str, eio_sid: str, data: list[Any], namespace: str, ack_id: Any) -> None:
        try:
            if data and data[0] == "command" and (namespace or "/") == "/":
                on_command(sid, eio_sid, data[1] if len(data) > 1 else None, ack_id)
                return
            default_event(srv, sid, eio_sid, data, namespace, ack_id)
        except Exception as exc:  # sent for analysis (only queued here), then handled as before
            report_handler_error(exc, f"socketio:{str(data[0])[:64] if data else '?'}")
            raise

    server._handle_event_internal = handle_event

    @on("join_operators")
    def on_join_operators(sid: str, *_: Any) -> dict[str, Any]:
        server.enter_room(sid, OPERATORS_ROOM)
        return {"room": OPERATORS_ROOM, "joined": True}

    @on("leave_operators")
    def on_leave_operators(sid: str, *_: Any) -> dict[str, Any]:
        server.leave_room(sid, OPERATORS_ROOM)
        return {"room": OPERATORS_ROOM, "joined": False}

    @on("subscribe_state")
    def on_subscribe_state(sid: str, data: Any = None) -> dict[str, Any]:
        if rate_limited(sid, data) is not None:
            return _state_error("rate_limited", "too many events on this connection; slow down")
        target = _state_target(data)
        if isinstance(target, dict):
            return target
        namespace, key = target
        mine = watches.setdefault(sid, {})
        if (namespace, key) in mine:
            return {"subscribed": True, "namespace": namespace, "key": key, "already": True}
        if len(mine) >= MAX_SUBSCRIPTIONS:
            return _state_error(
                "too_many_subscriptions",
                f"this connection holds {MAX_SUBSCRIPTIONS} state subscriptions, the most it may; "
                "unsubscribe_state one first",
            )

        def forward(update: Any) -> None:
            server.emit("state_update", state_payload(update), to=sid, ignore_queue=True)

        try:
            mine[(namespace, key)] = state_manager().watch_state(key, forward, namespace=namespace)
        except StateValidationError as exc:
            return _state_error("invalid_params", str(exc))
        except StateError as exc:
            return _state_error("unavailable", f"state store unreachable: {type(exc).__name__}")
        return {"subscribed": True, "namespace": namespace, "key": key}

    @on("unsubscribe_state")
    def on_unsubscribe_state(sid: str, data: Any = None) -> dict[str, Any]:
        target = _state_target(data)
        if isinstance(target, dict):
            return target
        watch = watches.get(sid, {}).pop(target, None)
        if watch is not None:
            watch.cancel()
        return {
            "subscribed": False,
            "namespace": target[0],
            "key": target[1],
            "was_subscribed": watch is not None,
        }

    @on("*")
    def on_unknown_event(event: str, sid: str, *_: Any) -> dict[str, Any]:
        error = {
            "code": "unknown_event",
            "message": f"unknown event {str(event)[:64]!r}; events: command, subscribe_state, "
            "unsubscribe_state, join_operators, leave_operators",
        }
        server.emit("error", error, to=sid, ignore_queue=True)
        return {"error": error}

    return lambda: len(buckets)
