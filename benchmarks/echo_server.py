"""The floors for bench_ack and bench_orders: a bare Flask-SocketIO (eventlet) echo handler,
served exactly like the web process (same listener, TCP_NODELAY).

With --redis, the handler first pushes the event onto a Redis list (one round trip through
redis-py on eventlet, as the web process talks to Redis) and answers when Redis confirmed it:
the least that an ack sent "after a confirmed broker publish" can cost on this stack, one
write per event.

With --redis-grouped, the events share their writes as HEAN's command writer shares them
(grouped_writes.py): one greenlet takes whatever events wait, after HEAN's own group-commit
linger, pushes them onto the list in one round trip, then sends each its ack as a raw packet,
the way the web process sends acks. No validation, no journal, no Celery message: the least a
durable ack costs with HEAN's batching.

Usage: python benchmarks/echo_server.py PORT [--redis | --redis-grouped]   (the Redis at
REDIS_URL, read from the environment: a URL may carry a password, and a command line is visible
to every local user)
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import redis  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402
from grouped_writes import Pending, group_commands, send  # noqa: E402

from web.server import serve  # noqa: E402

#: The list the publishing echoes push onto, trimmed to its last 1,000 events.
ECHO_LIST = "hean:bench:echo"


def push(broker: redis.Redis, events: list[str]) -> None:
    pipe = broker.pipeline(transaction=False)
    pipe.lpush(ECHO_LIST, *events)
    pipe.ltrim(ECHO_LIST, 0, 999)
    pipe.execute()


def group_writes(sio: SocketIO, broker: redis.Redis) -> None:
    """Each group of waiting `command` events written in one round trip, then acked."""

    def write(batch: list[Pending]) -> None:
        encoded = [json.dumps(data) for _, _, data in batch]
        push(broker, encoded)
        for (eio_sid, ack_id, _), text in zip(batch, encoded, strict=True):
            if ack_id is not None:
                send(sio, eio_sid, f"3{ack_id}[{text}]")

    group_commands(sio, write)


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
