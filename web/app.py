"""Flask app factory: Socket.IO control channel, REST endpoints and the dashboard."""

from __future__ import annotations

from typing import Any

import socketio
from flask import Flask
from flask_socketio import SocketIO

from hean.config import Settings, get_settings


def create_app(settings: Settings | None = None, async_mode: str = "eventlet") -> Flask:
    """Build the Flask app; its SocketIO server is at ``app.extensions["socketio"]``.

    `async_mode` is explicit so that moving off eventlet is a configuration change.
    """
    settings = settings or get_settings()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["HEAN_SETTINGS"] = settings

    # Built by hand: redis-py 8's default 5 s socket timeout makes the listener drop messages
    # on an idle channel; the channel name must match the workers' emitter (workers/emit.py).
    manager = socketio.RedisManager(
        settings.effective_redis_url(),
        channel=settings.socketio_channel,
        redis_options={"socket_timeout": None, "health_check_interval": 30},
    )
    sio = SocketIO(
        app,
        async_mode=async_mode,
        client_manager=manager,
        cors_allowed_origins=[],
        max_http_buffer_size=1_000_000,
    )

    from web import rest, socket_handlers

    app.register_blueprint(rest.blueprint)
    socket_handlers.register(sio, settings)
    return app


def socketio_of(app: Flask) -> Any:
    return app.extensions["socketio"]
