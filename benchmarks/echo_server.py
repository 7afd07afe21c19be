"""The floors for bench_ack and bench_orders: a bare Flask-SocketIO (eventlet) echo handler,
served exactly like the web process (same listener, TCP_NODELAY).

With --redis, the handler first pushes the event onto a Redis list (one round trip through
redis-py on eventlet, as the web process talks to Redis) and answers when Redis confirmed it:
the least that an ack sent "after a confirmed broker publish" can cost on this stack, one
write per event.

With --redis-grouped, the events share their writes as HEAN's command writer shares them
(web/intake.py): one greenlet takes whatever events wait, after HEAN's own group-commit linger
(`HEAN_INTAKE_LINGER_MS`, hean/group_commit.py), pushes them onto the list in one round trip,
then sends each its ack as a raw packet, the way the web process sends acks. No validation, no
journal, no Celery message: the least a durable ack costs with HEAN's batching.

Usage: python benchmarks/echo_server.py PORT [--redis | --redis-grouped]   (the Redis at
REDIS_URL, read from the environment: a URL may carry a password, and a command line is visible
to every local user)
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from engineio import packet as eio_packet  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

from hean.config import get_settings  # noqa: E402
from hean.group_commit import GroupCommit  # noqa: E402
from web.intake import LINGER_WINDOW_S, MAX_BATCH  # noqa: E402
from web.server import serve  # noqa: E402

#: The list the publishing echoes push onto, trimmed to its last 1,000 events.
ECHO_LIST = "hean:bench:echo"


def push(broker: redis.Redis, events: list[str]) -> None:
    pipe = broker.pipeline(transaction=False)
    pipe.lpush(ECHO_LIST, *events)
    pipe.ltrim(ECHO_LIST, 0, 999)
    pipe.execute()


def group_writes(sio: SocketIO, broker: redis.Redis) -> None:
    """`command` events taken before python-socketio acks them (as web/socket_handlers.py
    does), written in groups by one greenlet, then acked."""
    server = sio.server
    waiting: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    group_commit = GroupCommit(get_settings().intake_linger_ms / 1000.0, LINGER_WINDOW_S)

    def writer() -> None:
        while True:
            batch = [waiting.get()]
            group_commit.wait()
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            encoded = [json.dumps(data) for _, _, data in batch]
            push(broker, encoded)
            for (eio_sid, ack_id, _), text in zip(batch, encoded, strict=True):
                if ack_id is not None:
                    ack = eio_packet.Packet(eio_packet.MESSAGE, f"3{ack_id}[{text}]")
                    server._send_eio_packet(eio_sid, ack)
            group_commit.done()

    default_event = server._handle_event_internal

    def handle_event(srv: Any, sid: str, eio_sid: str, data: list[Any], namespace: str, ack_id: Any) -> None:
        if data and data[0] == "command":
            waiting.put((eio_sid, ack_id, data[1] if len(data) > 1 else None))
            return
        default_event(srv, sid, eio_sid, data, namespace, ack_id)

    server._handle_event_internal = handle_event
    sio.start_background_task(writer)


def main() -> None:
    app = Flask(__name__)
    sio = SocketIO(app, async_mode="eventlet", async_handlers=False)
    mode = sys.argv[2] if len(sys.argv) > 2 else None
    if mode not in (None, "--redis", "--redis-grouped"):
        sys.exit(f"unknown option {mode!r}: expected --redis or --redis-grouped")
    broker = redis.Redis.from_url(os.environ["REDIS_URL"]) if mode else None
    if broker is not None and mode == "--redis-grouped":
        group_writes(sio, broker)

    @sio.on("command")
    def echo(data: object) -> object:
        if broker is not None:
            push(broker, [json.dumps(data)])
        return data

    serve(app, "127.0.0.1", int(sys.argv[1]))


main()
