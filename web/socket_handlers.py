"""Socket.IO handlers: token-checked connections and the `command` control channel."""

from __future__ import annotations

import logging
from typing import Any

from flask import request
from flask_socketio import SocketIO, emit

from hean.auth import ensure_token, token_matches
from hean.config import Settings
from web.intake import accept_command

log = logging.getLogger(__name__)


def register(sio: SocketIO, settings: Settings) -> None:
    token = ensure_token(settings)

    @sio.on("connect")
    def on_connect(auth: Any = None) -> None:
        supplied = auth.get("token") if isinstance(auth, dict) else None
        if not token_matches(token, supplied):
            log.warning("event=connect_refused sid=%s reason=unauthorized", request.sid)  # type: ignore[attr-defined]
            raise ConnectionRefusedError("unauthorized: connect with auth={'token': <HEAN token>}")

    @sio.on("command")
    def on_command(data: Any = None) -> dict[str, Any]:
        ack = accept_command(data, reply_to=request.sid)  # type: ignore[attr-defined]
        emit("command_ack", ack)
        return ack
