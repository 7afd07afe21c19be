"""The floor for bench_ack: a bare Flask-SocketIO (eventlet) echo handler, served exactly like
the web process (same listener, TCP_NODELAY). Usage: python benchmarks/echo_server.py PORT"""

import eventlet

eventlet.monkey_patch()

import sys  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

from web.server import serve  # noqa: E402


def main() -> None:
    app = Flask(__name__)
    sio = SocketIO(app, async_mode="eventlet", async_handlers=False)

    @sio.on("command")
    def echo(data: object) -> object:
        return data

    serve(app, "127.0.0.1", int(sys.argv[1]))


main()
