"""A Python client for scripts and bots: HEAN's Socket.IO control channel with a sync face
(`Client`, concurrent futures) and an asyncio face (`AsyncClient`) over one implementation.

```python
from hean.client import Client

with Client("http://127.0.0.1:8000", token=TOKEN) as hean:
    hean.command("start").wait(10)
    hean.command("update_market", {"symbol": "BTC", "bid": "100", "ask": "100", "last": "100"}).wait(10)
    order = hean.submit_order("BTC", "BUY", "0.01")
    print(order.ack.result(5))   # the command's ack, at once
    print(order.wait(10))        # this order's outcome: {"client_order_id", "status", ...}
```

What it does beyond a bare Socket.IO client:

- **Coalescing** (on by default): single `submit_order` calls that are waiting go out as one
  `submit_orders` command. There is no timer: at most `coalesce_window` order events await
  their ack at a time; whatever was submitted meanwhile goes out, in order, as one event once
  an ack frees the window (up to 1,000 orders and 60 KB per event, under the server's 64 KiB).
  So an idle client sends each order at once, and a busy one sends batches that grow with its
  rate. Each order still gets its own ack (the carrying command's) and its own result, split
  from the command's per-order outcomes; an order the engine rejected fails with
  `OrderRejected` (code `engine_stopped`, `engine_halted`, `rate_limited` or `order_rejected`,
  as a lone `submit_order` would). If the server refuses a batch because one order in it is
  invalid (`invalid_params` naming `params.orders.<i>`), that order fails and the others are
  sent again in a new batch.
- **Request ids** are made here (`<random client prefix>.<counter>`) and kept with the exact
  frame sent. After a reconnect, every command whose result has not arrived is sent again
  with the same id, before anything new: the server runs a request id once (24 h) and answers
  a repeat with the first ack (`duplicate: true`) and, if it already ran, its first result; if
  it is still queued, its result goes to the connection that sent it last. A command whose
  result has not come `result_recheck` seconds (10) after its ack is asked for again the same
  way, then after twice as long (up to 60 s): a result published while the web process's
  message-queue listener was reconnecting (Redis restarted) reaches no one. Commands the
  server could not enqueue (`unavailable`) are resent with backoff (0.2 s doubling to 5 s, 20
  times).
- **Reconnection** with backoff (`reconnection_delay` doubling up to
  `reconnection_delay_max`), then every `subscribe_state` is renewed before any resend. A
  connection that stops answering the server's pings within its ping interval + timeout is
  treated as lost.

Transport, chosen on measurements: our own Socket.IO 5 / Engine.IO 4 framing (about 60 lines:
open, connect, event, ack, ping) over `websocket-client`, with one reader and one writer
thread. python-socketio's `Client` (already a dependency, and built on the same
websocket-client) hands every incoming message to a new thread: sending single orders at
1,000/s it used 0.88-0.95 ms of CPU per order (bench_client.py; issue 14 measured 1.4 ms for
two such clients), against 0.09-0.19 ms for this client coalescing (0.27-0.44 ms without),
whose budget is 0.2 ms.
Its `AsyncClient` needs aiohttp (not a dependency) and a task per message, and neither renews
subscriptions or resends commands after a reconnect, which is the part that needs care here.
`benchmarks/_harness.py` showed that the bare protocol over websocket-client (UTF-8 check off:
decoding the JSON checks it again, in C) is cheap; this module adds the bookkeeping.
`benchmarks/bench_client.py` measures its CPU per order against a plain python-socketio client.

One implementation, two faces (as python-socketio's Client/AsyncClient share a base): the
protocol, bookkeeping and I/O threads live in `_ClientCore`; a face only says how a future is
made and settled. The sync face uses `concurrent.futures.Future`; the async face uses futures
of its event loop, settled by one `call_soon_threadsafe` per received frame, so an asyncio
program never blocks on the socket.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Generic, Self, TypeVar, cast

import websocket

from hean.commands import MAX_ORDERS_PER_COMMAND, reject_code
from hean.commands.errors import REJECT_CODES

log = logging.getLogger(__name__)

#: Largest number of orders one coalesced `submit_orders` event carries (the server's limit).
MAX_ORDERS_PER_EVENT = MAX_ORDERS_PER_COMMAND
#: Largest encoded size of the orders in one coalesced event (the server refuses commands
#: above 64 KiB encoded; this leaves room for the envelope).
MAX_ORDERS_BYTES = 60_000
#: Backoff of resends of a command the server reported as queued (or unavailable) after a
#: reconnect: first delay and cap, in seconds.
RESEND_DELAY_S, RESEND_DELAY_MAX_S = 0.2, 5.0
#: An acked command whose result has not come this long after its ack is asked for again
#: (same request id; the server answers with its result once it ran), then after twice as
#: long, up to RESULT_RECHECK_MAX_S: a result can miss a connection that stays up (the web
#: process's message-queue listener was reconnecting to a restarted Redis when it came).
RESULT_RECHECK_S, RESULT_RECHECK_MAX_S = 10.0, 60.0
#: How many times a command refused as `unavailable` is resent before it fails.
UNAVAILABLE_RETRIES = 20

#: The codes a lone `submit_order` fails with when the engine rejects the order.
ORDER_REJECT_CODES = frozenset({"order_rejected", *REJECT_CODES.values()})

_ORDER_FIELD = re.compile(r"^params\.orders\.(\d+)(?:\.|$)")

F = TypeVar("F")


# -- errors -------------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of this module's errors."""


class ConnectionRefused(ClientError):
    """The server refused the connection (usually a wrong token)."""


class ConnectionLost(ClientError):
    """The connection is gone and will not come back (reconnection off or given up)."""


class ClientClosed(ClientError):
    """The client was closed before the answer came."""


class CommandError(ClientError):
    """A command (or one order of a batch) failed: `code`, `message`, `field` as the server sent."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field = code, message, field

    @classmethod
    def from_error(cls, error: Mapping[str, Any] | None, **extra: Any) -> Self:
        error = error or {}
        code, message = str(error.get("code", "unknown")), str(error.get("message", ""))
        return cls(code, message, error.get("field"), **extra)


class CommandRejected(CommandError):
    """The ack said `accepted: false`: the command was not enqueued (`ack` holds it)."""

    def __init__(self, code: str, message: str, field: str | None = None, ack: Any = None) -> None:
        super().__init__(code, message, field)
        self.ack = ack


class CommandFailed(CommandError):
    """The command ran and failed (`result` holds its `command_result`)."""

    def __init__(self, code: str, message: str, field: str | None = None, result: Any = None) -> None:
        super().__init__(code, message, field)
        self.result = result


class OrderRejected(CommandFailed):
    """The engine rejected this order (`order` holds its outcome, with `reject_reason`)."""

    def __init__(self, code: str, message: str, field: str | None = None, order: Any = None) -> None:
        super().__init__(code, message, field, result=order)
        self.order = order


class SubscriptionError(ClientError):
    """`subscribe_state` was refused (`error` holds the server's reason)."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = dict(error)


# -- handles ------------------------------------------------------------------------------------


class _AckOnDemand:
    """A `concurrent.futures.Future` made the first time somebody asks for it (`get`), settled
    before that or after. The sync face's acks: most callers wait for results only, and a
    Future made for every ack (a condition and a lock each) was about a tenth of `hean.client`'s
    CPU per order at 1,000 single orders/s (benchmarks/bench_client.py)."""

    __slots__ = ("_future", "_outcome")
    _lock = threading.Lock()  # one for all: held for a few attribute reads and writes

    def __init__(self) -> None:
        self._future: concurrent.futures.Future[Any] | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None

    def get(self) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._future is None:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                if self._outcome is not None:
                    value, exc = self._outcome
                    if exc is None:
                        future.set_result(value)
                    else:
                        future.set_exception(exc)
                self._future = future
            return self._future

    def set_result(self, value: Any) -> None:
        self._settle(value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(None, exc)

    def _settle(self, value: Any, exc: BaseException | None) -> None:
        """As a Future's: once (InvalidStateError after that, or if its owner cancelled it)."""
        with self._lock:
            future = self._future
            if future is None:
                if self._outcome is not None:
                    raise concurrent.futures.InvalidStateError("ack already settled")
                self._outcome = (value, exc)
                return
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


class CommandHandle(Generic[F]):
    """One command: `ack` and `result` are futures (sync face) or asyncio futures (async face).

    A refused command fails both with `CommandRejected`; a failed one fails `result` with
    `CommandFailed`. With the async face, `await handle` is `await handle.result`.
    """

    __slots__ = ("_ack", "command", "request_id", "result")

    def __init__(self, command: str, request_id: str, ack: F, result: F) -> None:
        self.command, self.request_id = command, request_id
        self._ack: Any = ack  # the future itself, or the sync face's _AckOnDemand
        self.result = result

    @property
    def ack(self) -> F:
        ack = self._ack
        if type(ack) is _AckOnDemand:  # only the sync face's, whose F is a concurrent Future
            return cast(F, ack.get())
        return cast(F, ack)

    def wait(self, timeout: float | None = None) -> Any:
        """Sync face: block until the result and return it (or raise the command's error)."""
        return self.result.result(timeout)  # type: ignore[attr-defined]  # the sync face's result is a concurrent future

    def __await__(self) -> Any:
        return self.result.__await__()  # type: ignore[attr-defined]  # the async face's result is an asyncio future

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.command} request_id={self.request_id}>"


class OrderHandle(CommandHandle[F]):
    """One order: `ack` is the ack of the command that carried it (`request_id`, known once
    sent), `result` this order's outcome dict, or `OrderRejected` / `CommandError`."""

    __slots__ = ("client_order_id", "encoded")

    def __init__(self, client_order_id: str, encoded: str, ack: F, result: F) -> None:
        super().__init__("submit_order", "", ack, result)
        self.client_order_id, self.encoded = client_order_id, encoded


# -- subscriptions ------------------------------------------------------------------------------


class _SubscriptionBase:
    """A `subscribe_state` of (namespace, key): the latest update, and those not yet read."""

    def __init__(
        self,
        core: _ClientCore,
        namespace: str,
        key: str,
        callback: Callable[[dict[str, Any]], Any] | None,
        max_pending: int,
    ) -> None:
        self._core = core
        self.namespace, self.key = namespace, key
        self.callback = callback
        self.latest: dict[str, Any] | None = None
        self._pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_pending)
        self.closed = False

    def _push(self, update: dict[str, Any]) -> None:  # on the face's thread (loop or reader)
        self.latest = update
        self._pending.append(update)  # a slow reader loses the oldest, never the latest
        if self.callback is not None:
            try:
                self.callback(update)
            except Exception:
                log.exception("event=state_callback_failed namespace=%s key=%s", self.namespace, self.key)

    def _end(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<Subscription {self.namespace}/{self.key}>"


class Subscription(_SubscriptionBase):
    """Sync face: `get(timeout)` the next update, or iterate; `close()` unsubscribes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready = threading.Condition()

    def _push(self, update: dict[str, Any]) -> None:
        with self._ready:
            super()._push(update)
            self._ready.notify_all()

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """The next unread `state_update` ({namespace, key, value, version, timestamp})."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._pending or self.closed, timeout):
                raise TimeoutError(f"no state_update for {self.namespace}/{self.key} within {timeout} s")
            if not self._pending:
                raise ClientClosed("subscription closed")
            return self._pending.popleft()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self.get()
            except ClientClosed:
                return

    def _end(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def close(self) -> None:
        self._core.unsubscribe(self)
        self._end()


class AsyncSubscription(_SubscriptionBase):
    """Async face: `await get()` the next update, or `async for`; `await close()` unsubscribes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready = asyncio.Event()

    def _push(self, update: dict[str, Any]) -> None:
        super()._push(update)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._pending:
            if self.closed:
                raise ClientClosed("subscription closed")
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.get()
            except ClientClosed:
                return

    def _end(self) -> None:  # on the loop
        self.closed = True
        self._ready.set()

    async def close(self) -> None:
        self._core.unsubscribe(self)
        self._end()


# -- the one implementation ---------------------------------------------------------------------


class _Request:
    """A command sent (or about to be): its frame, and whom its ack and result settle."""

    __slots__ = (
        "acked",
        "asked_at",
        "frame",
        "handle",
        "kind",
        "orders",
        "recheck_delay",
        "request_id",
        "resend_at",
        "resend_delay",
        "retries",
        "waiting_ack",
    )

    def __init__(
        self, request_id: str, frame: str, kind: str, handle: Any = None, orders: Any = None
    ) -> None:
        self.request_id, self.frame, self.kind = request_id, frame, kind
        self.handle = handle  # CommandHandle for "command" and "order" (not coalesced)
        self.orders: list[OrderHandle[Any]] = orders or []  # for "orders" (coalesced)
        self.waiting_ack = False
        self.acked = False
        self.resend_at: float | None = None  # when to send it again to fetch its result
        self.resend_delay = RESEND_DELAY_S
        self.retries = 0
        self.asked_at = 0.0  # when its last ack came (monotonic)
        self.recheck_delay = 0.0  # how long after that to ask for its result again


Settlement = tuple[Any, Any, BaseException | None]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encode = json.JSONEncoder(separators=(",", ":"), default=_json_default, ensure_ascii=False).encode


class _ClientCore:
    """The protocol, the bookkeeping and the two I/O threads; faces subclass it and define
    `_new_future`, `_settle` and `_deliver`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        operator: bool = False,
        coalesce: bool = True,
        coalesce_window: int = 1,
        reconnection: bool = True,
        reconnection_attempts: int = 0,
        reconnection_delay: float = 0.1,
        reconnection_delay_max: float = 5.0,
        connect_timeout: float = 10.0,
        socketio_path: str = "socket.io",
        max_pending_updates: int = 1000,
        result_recheck: float = RESULT_RECHECK_S,
    ) -> None:
        if coalesce_window < 1:
            raise ValueError("coalesce_window must be at least 1")
        base = url.rstrip("/")
        if base.startswith("http://"):
            base = "ws://" + base[7:]
        elif base.startswith("https://"):
            base = "wss://" + base[8:]
        elif not base.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with http://, https://, ws:// or wss://, got {url!r}")
        self._ws_url = f"{base}/{socketio_path.strip('/')}/?EIO=4&transport=websocket"
        self._auth: dict[str, Any] = {"token": token, **({"operator": True} if operator else {})}
        self.coalesce, self.coalesce_window = coalesce, coalesce_window
        self.reconnection, self.reconnection_attempts = reconnection, reconnection_attempts
        self.reconnection_delay, self.reconnection_delay_max = reconnection_delay, reconnection_delay_max
        self.connect_timeout = connect_timeout
        self._max_pending_updates = max_pending_updates
        if result_recheck <= 0:
            raise ValueError("result_recheck must be positive")
        self.result_recheck = result_recheck
        self._next_sweep = 0.0  # when to look for acked commands whose result is overdue

        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._ack_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits on it
        self._outbox: collections.deque[Any] = collections.deque()  # OrderHandle | _Request
        self._requests: dict[str, _Request] = {}  # sent, result not in yet (in send order)
        self._unacked_order_events = 0
        self._priority: list[str] = []  # frames to send before anything else (after a reconnect)
        self._ack_waiters: dict[int, Callable[[Any], None]] = {}
        self._scheduled: set[_Request] = set()  # requests with a resend due at `resend_at`
        self._subscriptions: dict[tuple[str, str], _SubscriptionBase] = {}
        self._handlers: dict[str, list[Callable[[Any], Any]]] = {}
        self._ws: websocket.WebSocket | None = None
        self._connected = False
        self._closing = False
        self._failure: BaseException | None = None
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self.sid: str | None = None
        self.reconnects = 0

    # -- what a face defines --

    def _new_future(self) -> Any:
        raise NotImplementedError

    def _new_ack_future(self) -> Any:
        return self._new_future()

    def _settle(self, settlements: list[Settlement]) -> None:
        """Resolve (future, value, None) or fail (future, None, exc), from the reader thread."""
        raise NotImplementedError

    def _deliver(self, subscription: _SubscriptionBase, update: dict[str, Any]) -> None:
        raise NotImplementedError

    def _call_handler(self, handler: Callable[[Any], Any], data: Any) -> None:
        raise NotImplementedError

    def _end(self, subscription: _SubscriptionBase) -> None:
        """Mark `subscription` closed and wake whoever waits on it."""
        subscription._end()

    # -- ids --

    def new_request_id(self) -> str:
        return f"{self._prefix}.{next(self._ids)}"

    def new_client_order_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    # -- connecting --

    def _open(self) -> websocket.WebSocket:
        """A connected, authenticated WebSocket (Socket.IO handshake done)."""
        ws = websocket.create_connection(
            self._ws_url,
            timeout=self.connect_timeout,
            enable_multithread=True,
            # websocket-client checks UTF-8 in pure Python; json.loads checks it again, in C
            skip_utf8_validation=True,
            sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        try:
            opening = ws.recv()
            if not isinstance(opening, str) or not opening.startswith("0"):
                raise ConnectionError(f"unexpected Engine.IO opening packet {opening!r:.80}")
            info = json.loads(opening[1:])
            ws.send("40" + _encode(self._auth))
            while True:
                raw = ws.recv()
                reply = raw if isinstance(raw, str) else raw.decode()
                if reply.startswith("40"):
                    self.sid = json.loads(reply[2:] or "{}").get("sid")
                    break
                if reply.startswith("44"):
                    message = json.loads(reply[2:] or "{}")
                    reason = message.get("message", reply) if isinstance(message, dict) else reply
                    raise ConnectionRefused(reason)
                if reply == "2":
                    ws.send("3")
            # a server that stops pinging is gone
            ws.settimeout((info.get("pingInterval", 25000) + info.get("pingTimeout", 20000)) / 1000.0 + 1.0)
        except BaseException:
            ws.close()
            raise
        return ws

    def connect(self) -> None:
        """Connect and authenticate; raises ConnectionRefused or OSError if it cannot."""
        with self._lock:
            if self._reader is not None:
                raise ClientError("already connected (a client connects once; it reconnects by itself)")
        ws = self._open()
        with self._lock:
            self._ws, self._connected = ws, True
            self._reader = threading.Thread(target=self._read_loop, name="hean-client-reader", daemon=True)
            self._writer = threading.Thread(target=self._write_loop, name="hean-client-writer", daemon=True)
        self._reader.start()
        self._writer.start()

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self) -> None:
        """Disconnect; whatever has not been answered fails with ClientClosed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            ws, self._connected = self._ws, False
            self._wake.notify_all()
        if ws is not None:
            with contextlib.suppress(Exception):  # closing anyway
                ws.send("41")
            ws.close()
        for thread in (self._writer, self._reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        self._fail_everything(ClientClosed("client closed"))

    def _fail_everything(self, exc: BaseException) -> None:
        settlements: list[Settlement] = []
        with self._lock:
            self._failure = exc
            items = [*self._requests.values(), *self._outbox]
            self._requests.clear()
            self._outbox.clear()
            waiters = list(self._ack_waiters.values())
            self._ack_waiters.clear()
            subscriptions = list(self._subscriptions.values())
            self._subscriptions.clear()
            self._scheduled.clear()
            self._wake.notify_all()
        for item in items:
            for handle in _handles_of(item):
                settlements += [(handle._ack, None, exc), (handle.result, None, exc)]
        self._settle(settlements)
        for waiter in waiters:
            waiter(None)
        for subscription in subscriptions:
            self._end(subscription)

    # -- sending --

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ClientClosed("client closed")
        if self._reader is None:
            raise ClientError("not connected: call connect() first")

    def _enqueue(self, item: Any) -> None:
        with self._lock:
            self._check_open()
            self._outbox.append(item)
            # wake the writer only if it can send now: an order waiting for the window is
            # picked up when an ack frees it (waking it per order cost ~40 us of CPU each)
            if len(self._outbox) == 1 and self._ready_to_send():
                self._wake.notify()

    def command(
        self, name: str, params: Mapping[str, Any] | None = None, request_id: str | None = None
    ) -> Any:
        """Send command `name`; returns a handle whose `ack` and `result` settle later."""
        request_id = request_id or self.new_request_id()
        body = {"command": name, "params": dict(params or {}), "request_id": request_id}
        frame = '42["command",' + _encode(body) + "]"
        handle = CommandHandle(name, request_id, self._new_ack_future(), self._new_future())
        self._enqueue(_Request(request_id, frame, "command", handle=handle))
        return handle

    def submit_order(
        self,
        symbol: str,
        side: str,
        quantity: Any,
        order_type: str = "MARKET",
        price: Any = None,
        time_in_force: str = "GTC",
        client_order_id: str | None = None,
    ) -> Any:
        """Submit one order (coalesced with others waiting, unless `coalesce=False`)."""
        order: dict[str, Any] = {
            "client_order_id": client_order_id or self.new_client_order_id(),
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "order_type": order_type,
        }
        if price is not None:
            order["price"] = price
        if time_in_force != "GTC":
            order["time_in_force"] = time_in_force
        encoded = _encode(order)
        handle = OrderHandle(order["client_order_id"], encoded, self._new_ack_future(), self._new_future())
        if self.coalesce:
            self._enqueue(handle)
            return handle
        handle.request_id = request_id = self.new_request_id()
        frame = '42["command",{"command":"submit_order","params":' + encoded
        frame += ',"request_id":"' + request_id + '"}]'
        self._enqueue(_Request(request_id, frame, "order", handle=handle))
        return handle

    def submit_orders(self, orders: Iterable[Mapping[str, Any]], request_id: str | None = None) -> Any:
        """One `submit_orders` command: its result holds every order's outcome, in input order
        (a rejected order is an outcome there, not an error)."""
        listed = []
        for order in orders:
            item = dict(order)
            item.setdefault("client_order_id", self.new_client_order_id())
            listed.append(item)
        return self.command("submit_orders", {"orders": listed}, request_id=request_id)

    def _take_orders(self) -> _Request:
        """Whatever single orders wait at the head of the outbox, as one command (lock held)."""
        handles: list[OrderHandle[Any]] = []
        size = 0
        outbox = self._outbox
        while outbox and len(handles) < MAX_ORDERS_PER_EVENT:
            head = outbox[0]
            if not isinstance(head, OrderHandle) or (handles and size + len(head.encoded) > MAX_ORDERS_BYTES):
                break
            handles.append(outbox.popleft())
            size += len(head.encoded) + 1
        request_id = self.new_request_id()
        for handle in handles:
            handle.request_id = request_id
        frame = (
            '42["command",{"command":"submit_orders","params":{"orders":['
            + ",".join(h.encoded for h in handles)
            + ']},"request_id":"'
            + request_id
            + '"}]'
        )
        return _Request(request_id, frame, "orders", orders=handles)

    def _ready_to_send(self) -> bool:
        if self._priority:
            return True
        if not self._outbox:
            return False
        head = self._outbox[0]
        return not isinstance(head, OrderHandle) or self._unacked_order_events < self.coalesce_window

    def _schedule_resend(self, request: _Request) -> None:
        """Send `request` again after its backoff (lock held)."""
        request.resend_at = time.monotonic() + request.resend_delay
        request.resend_delay = min(RESEND_DELAY_MAX_S, request.resend_delay * 2)
        self._scheduled.add(request)
        self._wake.notify()

    def _next_resend(self) -> float | None:
        return min((r.resend_at for r in self._scheduled if r.resend_at is not None), default=None)

    def _next_wake(self) -> float | None:
        """When the writer has something to do without being woken: a resend, or a sweep for
        overdue results while commands are out (lock held)."""
        due = self._next_resend()
        if self._requests and (due is None or self._next_sweep < due):
            return self._next_sweep
        return due

    def _sweep(self) -> None:
        """Ask again for the results of acked commands that are overdue (lock held). Once a
        second at most: a scan of what is out, not a timer per command."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.result_recheck / 2)
        for request in self._requests.values():
            overdue = request.acked and not request.waiting_ack and request.resend_at is None
            if overdue and now - request.asked_at >= request.recheck_delay:
                request.asked_at = now
                request.recheck_delay = min(RESULT_RECHECK_MAX_S, request.recheck_delay * 2)
                self._resend(request)

    def _write_loop(self) -> None:
        """The writer: sends the priority frames, then the outbox, coalescing orders."""
        while True:
            with self._lock:
                while True:
                    if self._closing or self._failure is not None:
                        return
                    if self._connected:
                        self._due_resends()
                        if self._ready_to_send():
                            break
                    due = self._next_wake() if self._connected else None
                    self._wake.wait(None if due is None else max(0.0, due - time.monotonic()))
                frames, ws = self._priority, self._ws
                self._priority = []
                if not frames:
                    head = self._outbox[0]
                    request = self._take_orders() if isinstance(head, OrderHandle) else self._outbox.popleft()
                    self._requests[request.request_id] = request
                    request.waiting_ack = True
                    if request.kind == "orders":
                        self._unacked_order_events += 1
                    frames = [request.frame]
            try:
                for frame in frames:
                    ws.send(frame)  # type: ignore[union-attr]  # the writer runs only while connected
            except Exception as exc:  # the reader sees the broken socket and reconnects
                log.debug("event=send_failed error=%s", exc)
                with self._lock:
                    if self._ws is ws:
                        self._connected = False  # sent frames are resent after the reconnect
                    self._wake.wait(0.05)

    def _due_resends(self) -> None:
        """Queue the resends that are due (lock held)."""
        if self._requests:
            self._sweep()
        if not self._scheduled:
            return
        now = time.monotonic()
        for request in list(self._scheduled):
            if request.request_id not in self._requests:  # answered meanwhile
                self._scheduled.discard(request)
            elif request.resend_at is not None and request.resend_at <= now:
                request.resend_at = None
                self._scheduled.discard(request)
                self._resend(request)

    def _resend(self, request: _Request) -> None:
        if not request.waiting_ack and request.kind == "orders":
            self._unacked_order_events += 1
        request.waiting_ack = True
        self._priority.append(request.frame)

    def _emit_with_ack(self, event: str, data: Any, on_reply: Callable[[Any], None]) -> None:
        with self._lock:
            self._check_open()
            ack_id = next(self._ack_ids)
            self._ack_waiters[ack_id] = on_reply
            self._priority.append(f"42{ack_id}" + _encode([event, data]))
            self._wake.notify()

    # -- state --

    def subscribe(
        self, subscription: _SubscriptionBase, on_reply: Callable[[dict[str, Any] | None], object]
    ) -> None:
        target = {"key": subscription.key, "namespace": subscription.namespace}
        where = (subscription.namespace, subscription.key)
        # recorded before the reply: the server sends the current value before its reply
        with self._lock:
            self._subscriptions[where] = subscription

        def replied(reply: Any) -> None:
            if not (isinstance(reply, dict) and reply.get("subscribed")):
                with self._lock:
                    if self._subscriptions.get(where) is subscription:
                        del self._subscriptions[where]
            on_reply(reply)

        self._emit_with_ack("subscribe_state", target, replied)

    def unsubscribe(self, subscription: _SubscriptionBase) -> None:
        with self._lock:
            mine = self._subscriptions.get((subscription.namespace, subscription.key))
            if mine is subscription:
                del self._subscriptions[(subscription.namespace, subscription.key)]
            alive = self._connected and not self._closing
        if mine is subscription and alive:
            target = {"key": subscription.key, "namespace": subscription.namespace}
            self._emit_with_ack("unsubscribe_state", target, lambda _: None)

    def on(self, event: str, handler: Callable[[Any], Any]) -> None:
        """Call `handler(data)` for every `event` the server sends that this client does not
        consume itself (e.g. `health_pulse` for an operator)."""
        self._handlers.setdefault(event, []).append(handler)

    # -- receiving --

    def _read_loop(self) -> None:
        while True:
            ws = self._ws
            try:
                while True:
                    frame = ws.recv()  # type: ignore[union-attr]  # the reader runs only while connected
                    if not frame:
                        raise ConnectionError("connection closed")
                    self._on_frame(frame if isinstance(frame, str) else frame.decode())
            except Exception as exc:
                if self._closing:
                    return
                log.warning("event=connection_lost error=%s", f"{type(exc).__name__}: {exc}"[:200])
            if not self._reconnect():
                return

    def _on_frame(self, frame: str) -> None:
        kind = frame[:2]
        if kind == "42":
            event, *rest = json.loads(frame[2:])
            data = rest[0] if rest else None
            if event == "command_result" and isinstance(data, dict):
                self._on_result(data)
            elif event == "command_ack" and isinstance(data, dict):
                self._on_ack(data)
            elif event == "state_update" and isinstance(data, dict):
                self._on_state(data)
            else:
                for handler in self._handlers.get(event, ()):
                    self._call_handler(handler, data)
        elif kind == "43":
            digits = len(frame) - len(frame[2:].lstrip("0123456789"))
            with self._lock:
                waiter = self._ack_waiters.pop(int(frame[2:digits]), None)
            if waiter is not None:
                args = json.loads(frame[digits:])
                waiter(args[0] if args else None)
        elif frame == "2":
            self._ws.send("3")  # type: ignore[union-attr]  # a ping arrives only while connected
        elif kind in ("41", "44") or frame == "1":
            raise ConnectionError(f"server closed the session ({frame[:80]})")

    def _on_ack(self, ack: dict[str, Any]) -> None:
        settlements: list[Settlement] = []
        with self._lock:
            request = self._requests.get(ack.get("request_id"))  # type: ignore[arg-type]  # a missing id finds nothing
            if request is None:
                return
            if request.waiting_ack:
                request.waiting_ack = False
                if request.kind == "orders":
                    self._unacked_order_events -= 1
                    self._wake.notify()
            if ack.get("accepted"):
                # the server sends its result to the connection that sent it last (a resend
                # after a reconnect included); if none comes, the sweep asks again
                request.asked_at = time.monotonic()
                if not request.recheck_delay:
                    request.recheck_delay = self.result_recheck
                if not request.acked:
                    request.acked = True
                    settlements = [(h._ack, ack, None) for h in _handles_of(request)]
            else:
                settlements = self._refused(request, ack)
        self._settle(settlements)

    def _refused(self, request: _Request, ack: dict[str, Any]) -> list[Settlement]:
        """An ack with `accepted: false` (lock held)."""
        error = ack.get("error") or {}
        code = error.get("code")
        if code == "unavailable" and request.retries < UNAVAILABLE_RETRIES:
            request.retries += 1  # the server may still run it: the same id is safe to resend
            self._schedule_resend(request)
            return []
        del self._requests[request.request_id]
        match = _ORDER_FIELD.match(error.get("field") or "") if request.kind == "orders" else None
        if match and code == "invalid_params" and int(match.group(1)) < len(request.orders):
            # one invalid order: it fails; the others go out again, first, in a new batch
            bad = int(match.group(1))
            field = "params" + error["field"][len(match.group(0).rstrip(".")) :]
            message = re.sub(r"^params\.orders\.\d+\.?", "params.", str(error.get("message", "")))
            exc = CommandRejected(code, message.replace("params.:", "params:"), field.rstrip("."), ack=ack)
            others = request.orders[:bad] + request.orders[bad + 1 :]
            self._outbox.extendleft(reversed(others))
            self._wake.notify()
            handle = request.orders[bad]
            return [(handle._ack, None, exc), (handle.result, None, exc)]
        exc = CommandRejected.from_error(error, ack=ack)
        return [s for h in _handles_of(request) for s in ((h._ack, None, exc), (h.result, None, exc))]

    def _on_result(self, result: dict[str, Any]) -> None:
        with self._lock:
            request = self._requests.pop(result.get("request_id"), None)  # type: ignore[arg-type]  # a missing id finds nothing
            if request is None:
                return
            if request.waiting_ack and request.kind == "orders":
                self._unacked_order_events -= 1  # the ack of a resend may never come now
                self._wake.notify()
            settlements = [] if request.acked else self._implied_acks(request, result)
        self._settle(settlements + _outcomes(request, result))

    @staticmethod
    def _implied_acks(request: _Request, result: dict[str, Any]) -> list[Settlement]:
        """A result before any ack (the ack went to an earlier connection): it was accepted."""
        ack = {
            "request_id": request.request_id,
            "command": result.get("command"),
            "accepted": True,
            "duplicate": True,
            "error": None,
        }
        return [(h._ack, ack, None) for h in _handles_of(request)]

    def _on_state(self, update: dict[str, Any]) -> None:
        subscription = self._subscriptions.get((update.get("namespace"), update.get("key")))  # type: ignore[arg-type]  # missing keys find nothing
        if subscription is not None:
            self._deliver(subscription, update)

    # -- reconnecting --

    def _reconnect(self) -> bool:
        """Connect again with backoff; renew subscriptions, then resend unanswered commands."""
        with self._lock:
            self._connected = False
            old, self._ws = self._ws, None
            waiters = list(self._ack_waiters.values())
            self._ack_waiters.clear()
        if old is not None:
            old.close()
        for waiter in waiters:  # a subscribe in flight is renewed below if it was recorded
            waiter(None)
        delay, attempt = self.reconnection_delay, 0
        while self.reconnection and not self._closing:
            attempt += 1
            if self.reconnection_attempts and attempt > self.reconnection_attempts:
                break
            time.sleep(delay * (0.5 + random.random()))
            delay = min(self.reconnection_delay_max, delay * 2)
            try:
                ws = self._open()
            except ConnectionRefused as exc:
                log.error("event=reconnect_refused reason=%s", exc)
                self._fail_everything(ConnectionLost(f"reconnect refused: {exc}"))
                return False
            except Exception as exc:
                log.info("event=reconnect_failed attempt=%d error=%s", attempt, type(exc).__name__)
                continue
            with self._lock:
                if self._closing:
                    ws.close()
                    return False
                self._ws = ws
                self.reconnects += 1
                self._unacked_order_events = 0
                # emitted during the outage (their waiters are current), after what is renewed
                leftover, self._priority = self._priority, []
                for namespace, key in self._subscriptions:
                    ack_id = next(self._ack_ids)
                    self._ack_waiters[ack_id] = _log_resubscribe
                    target = {"key": key, "namespace": namespace}
                    self._priority.append(f"42{ack_id}" + _encode(["subscribe_state", target]))
                self._scheduled.clear()
                for request in self._requests.values():
                    request.waiting_ack = False
                    request.resend_at = None
                    request.resend_delay = RESEND_DELAY_S
                    self._resend(request)
                self._priority += leftover
                resent = len(self._requests)
                self._connected = True
                self._wake.notify_all()
            subscribed = len(self._subscriptions)
            log.info("event=reconnected attempt=%d resubscribed=%d resent=%d", attempt, subscribed, resent)
            return True
        self._fail_everything(ConnectionLost("connection lost and not re-established"))
        return False


def _log_resubscribe(reply: Any) -> None:
    if not (isinstance(reply, dict) and reply.get("subscribed")):
        log.error("event=resubscribe_failed reply=%s", reply)


def _handles_of(item: Any) -> list[Any]:
    if isinstance(item, OrderHandle):
        return [item]
    return item.orders if item.kind == "orders" else [item.handle]


def _order_rejected(order: dict[str, Any]) -> OrderRejected:
    reason = order.get("reject_reason")
    return OrderRejected(
        reject_code(str(reason)),
        f"order {order.get('client_order_id')} rejected: {reason}",
        "order",
        order=order,
    )


def _outcomes(request: _Request, result: dict[str, Any]) -> list[Settlement]:
    """Each handle's result from a `command_result`."""
    success, value = result.get("success"), result.get("result")
    if request.kind == "command":
        handle = request.handle
        if success:
            return [(handle.result, value, None)]
        return [(handle.result, None, CommandFailed.from_error(result.get("error"), result=result))]
    if request.kind == "order":
        handle = request.handle
        if success:
            return [(handle.result, (value or {}).get("order", value), None)]
        error = result.get("error") or {}
        exc: CommandError = OrderRejected(
            str(error.get("code")), str(error.get("message")), error.get("field"), order=None
        )
        if error.get("code") not in ORDER_REJECT_CODES:
            exc = CommandFailed.from_error(error, result=result)
        return [(handle.result, None, exc)]
    outcomes = value.get("results") if success and isinstance(value, dict) else None
    if not isinstance(outcomes, list) or len(outcomes) != len(request.orders):
        error = result.get("error") or {"code": "invalid_result", "message": str(value)[:200]}
        exc = CommandFailed.from_error(error, result=result)
        return [(h.result, None, exc) for h in request.orders]
    settlements: list[Settlement] = []
    for handle, order in zip(request.orders, outcomes, strict=True):
        if order.get("status") == "REJECTED":
            settlements.append((handle.result, None, _order_rejected(order)))
        else:
            settlements.append((handle.result, order, None))
    return settlements


# -- the sync face ------------------------------------------------------------------------------


class Client(_ClientCore):
    """Sync face: every handle's `ack` and `result` are `concurrent.futures.Future`s.

    Thread-safe. Callbacks (`on`, `subscribe_state(callback=...)`) run on the reader thread:
    keep them short.
    """

    def __init__(self, url: str, token: str, **options: Any) -> None:
        super().__init__(url, token, **options)

    def __enter__(self) -> Client:
        if self._reader is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_future(self) -> concurrent.futures.Future[Any]:
        return concurrent.futures.Future()

    def _new_ack_future(self) -> _AckOnDemand:
        return _AckOnDemand()

    def _settle(self, settlements: list[Settlement]) -> None:
        for future, value, exc in settlements:
            try:
                if exc is None:
                    future.set_result(value)
                else:
                    future.set_exception(exc)
            except concurrent.futures.InvalidStateError:  # cancelled by its owner
                pass

    def _deliver(self, subscription: _SubscriptionBase, update: dict[str, Any]) -> None:
        subscription._push(update)

    def _call_handler(self, handler: Callable[[Any], Any], data: Any) -> None:
        try:
            handler(data)
        except Exception:
            log.exception("event=handler_failed")

    def command(
        self, name: str, params: Mapping[str, Any] | None = None, request_id: str | None = None
    ) -> CommandHandle[concurrent.futures.Future[Any]]:
        return super().command(name, params, request_id)

    def subscribe_state(
        self,
        key: str,
        namespace: str = "default",
        callback: Callable[[dict[str, Any]], Any] | None = None,
        timeout: float = 10.0,
    ) -> Subscription:
        """Follow a state key: its current value at once, then every change (also after a
        reconnect). Raises SubscriptionError if the server refuses."""
        subscription = Subscription(self, namespace, key, callback, self._max_pending_updates)
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.subscribe(subscription, reply.set_result)
        answer = reply.result(timeout)
        if not (isinstance(answer, dict) and answer.get("subscribed")):
            raise SubscriptionError(_refusal(answer))
        return subscription


# -- the async face -----------------------------------------------------------------------------


class AsyncClient(_ClientCore):
    """Asyncio face: handles hold futures of the loop that created the client; `await handle`
    gives the result. Create, use and close it from one event loop."""

    def __init__(self, url: str, token: str, **options: Any) -> None:
        super().__init__(url, token, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    async def connect(self) -> None:  # type: ignore[override]  # the async face awaits what the sync one calls
        """Connect and authenticate (the handshake runs in a thread; the loop keeps running)."""
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, super().connect)

    async def close(self) -> None:  # type: ignore[override]  # the async face awaits what the sync one calls
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, super().close)

    async def __aenter__(self) -> AsyncClient:
        if self._reader is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _new_future(self) -> asyncio.Future[Any]:
        if self._loop is None:
            raise ClientError("not connected: await connect() first")
        return self._loop.create_future()

    def _new_ack_future(self) -> asyncio.Future[Any]:
        # a refused command fails its result too: awaiting the result alone is enough
        future = self._new_future()
        future.add_done_callback(_retrieve)
        return future

    def _settle(self, settlements: list[Settlement]) -> None:
        if settlements and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_settle_on_loop, settlements)

    def _deliver(self, subscription: _SubscriptionBase, update: dict[str, Any]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(subscription._push, update)

    def _end(self, subscription: _SubscriptionBase) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(subscription._end)

    def _call_handler(self, handler: Callable[[Any], Any], data: Any) -> None:
        if self._loop is None or self._loop.is_closed():
            return

        def run() -> None:
            outcome = handler(data)
            if asyncio.iscoroutine(outcome):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)  # keep it alive until done
                task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(run)

    def command(
        self, name: str, params: Mapping[str, Any] | None = None, request_id: str | None = None
    ) -> CommandHandle[asyncio.Future[Any]]:
        return super().command(name, params, request_id)

    async def subscribe_state(
        self,
        key: str,
        namespace: str = "default",
        callback: Callable[[dict[str, Any]], Any] | None = None,
    ) -> AsyncSubscription:
        """Follow a state key: its current value at once, then every change (also after a
        reconnect). Raises SubscriptionError if the server refuses."""
        subscription = AsyncSubscription(self, namespace, key, callback, self._max_pending_updates)
        reply: asyncio.Future[Any] = self._new_future()  # raises if not connected
        loop = reply.get_loop()
        self.subscribe(subscription, lambda answer: loop.call_soon_threadsafe(_resolve, reply, answer))
        answer = await reply
        if not (isinstance(answer, dict) and answer.get("subscribed")):
            raise SubscriptionError(_refusal(answer))
        return subscription


def _refusal(answer: Any) -> dict[str, Any]:
    error = answer.get("error") if isinstance(answer, dict) else None
    return error or {"code": "unavailable", "message": "no reply (connection lost while subscribing)"}


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved: asyncio does not log it as never retrieved


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _settle_on_loop(settlements: list[Settlement]) -> None:
    for future, value, exc in settlements:
        if future.done():  # cancelled by its owner
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
            if isinstance(exc, ClientClosed):
                future.exception()  # abandoned at close: nothing to report
