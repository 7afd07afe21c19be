"""Flask app factory: Socket.IO control channel, REST endpoints and the dashboard."""

from __future__ import annotations

import logging

from flask import Flask
from flask_socketio import SocketIO

from hean import fastjson
from hean.config import Settings, get_settings
from web import packets
from web.bus import FanOutRedisManager

#: Largest Socket.IO message the transport accepts; a bigger one closes the connection.
#: Below it, an oversized command gets a `payload_too_large` error (see web/intake.py).
MAX_MESSAGE_BYTES = 2_000_000
#: Engine.IO's ping (python-engineio's defaults, named here): the server pings every
#: PING_INTERVAL_S and drops a client that has not answered PING_TIMEOUT_S later, so a live
#: client sends something at least that often (web.server.IDLE_TIMEOUT_S relies on it).
PING_INTERVAL_S, PING_TIMEOUT_S = 25, 20


def create_app(settings: Settings | None = None, async_mode: str = "eventlet") -> Flask:
    """Build the Flask app; its SocketIO server is at ``app.extensions["socketio"]``.

    `async_mode` is explicit so that moving off eventlet is a configuration change.
    """
    settings = settings or get_settings()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["HEAN_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = MAX_MESSAGE_BYTES  # a REST body, as a Socket.IO message

    # Built by hand: redis-py 8's default 5 s socket timeout makes the listener drop messages
    # on an idle channel; the channel name must match the workers' emitter (workers/emit.py).
    manager = FanOutRedisManager(
        settings.effective_redis_url(),
        channel=settings.socketio_channel,
        redis_options={"socket_timeout": None, "health_check_interval": 30},
        json=fastjson,
    )
    origins = settings.cors_origin_list
    # python-socketio and python-engineio give their loggers a handler of their own when the
    # level is unset, so each of their errors was written twice (once bare, once in HEAN's
    # format through the root logger); a level set here keeps theirs out, at their own default.
    for name in ("socketio.server", "engineio.server"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.ERROR)
    sio = SocketIO(
        app,
        async_mode=async_mode,
        client_manager=manager,
        # None: same origin only (python-engineio reads [] as "no checks at all").
        cors_allowed_origins=origins or None,
        max_http_buffer_size=MAX_MESSAGE_BYTES,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        # Each connection's events run in order in its own reader; handlers yield first (see
        # web/socket_handlers.py), so a flooding client cannot starve the others.
        async_handlers=False,
        json=fastjson,  # every packet out is encoded by orjson (hean/fastjson.py)
        serializer=packets.CheckedPacket,  # a malformed packet closes its connection, quietly
    )
    packets.install(sio.server)
    packets.close_unsigned(sio.server)
    if origins:
        from flask_cors import CORS

        CORS(app, resources={r"/api/*": {"origins": origins}})

    from hean.command_journal import CommandJournal
    from hean.commands import load_command_modules
    from hean.db import database
    from hean.history import HistoryStore
    from hean.redis_client import DurabilityRule, sync_client
    from web import (
        analyses_api,
        commands_api,
        error_reports,
        health,
        history_api,
        metrics,
        rest,
        socket_handlers,
    )
    from web.intake import CommandIntake
    from workers.app import app as celery_app

    load_command_modules()  # a project's own commands: validated here, run by the workers
    durability = DurabilityRule(settings.ack_fsync, settings.ack_replicas)
    journal = CommandJournal(sync_client(), HistoryStore(database))
    intake = CommandIntake(celery_app, journal, durability, settings.intake_linger_ms / 1000.0)
    app.extensions["hean_intake"] = intake
    app.register_blueprint(rest.blueprint)
    app.register_blueprint(commands_api.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(analyses_api.blueprint)
    app.register_blueprint(history_api.blueprint)
    error_reports.install(app)
    commands_api.install_json_errors(app)
    rest.install_security_headers(app)
    app.extensions["hean_connected_clients"] = socket_handlers.register(sio, settings, intake, manager.routes)
    return app
