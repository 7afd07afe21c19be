"""The floors for bench_ack: a bare Flask-SocketIO (eventlet) echo handler, served exactly like
the web process (same listener, TCP_NODELAY).

With --redis, the handler first pushes the event onto a Redis list (one round trip through
redis-py on eventlet, as the web process talks to Redis) and answers when Redis confirmed it:
the least that an ack sent "after a confirmed broker publish" can cost on this stack.

Usage: python benchmarks/echo_server.py PORT [--redis]   (--redis: the Redis at REDIS_URL, read from
the environment: a URL may carry a password, and a command line is visible to every local user)
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import redis  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

from web.server import serve  # noqa: E402

#: The list the publishing echo pushes onto, trimmed to its last 1,000 events.
ECHO_LIST = "hean:bench:echo"


def main() -> None:
    app = Flask(__name__)
    sio = SocketIO(app, async_mode="eventlet", async_handlers=False)
    broker = redis.Redis.from_url(os.environ["REDIS_URL"]) if sys.argv[2:] == ["--redis"] else None

    @sio.on("command")
    def echo(data: object) -> object:
        if broker is not None:
            pipe = broker.pipeline(transaction=False)
            pipe.lpush(ECHO_LIST, json.dumps(data))
            pipe.ltrim(ECHO_LIST, 0, 999)
            pipe.execute()
        return data

    serve(app, "127.0.0.1", int(sys.argv[1]))


main()
