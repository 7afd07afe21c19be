"""The web process's own heartbeat: every 100 ms, {ts, clients, pid, host} in Redis for the pulse."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from flask import Flask

from hean.core.system.probes import WEB_HEARTBEAT_KEY
from hean.logs import FailureLog
from hean.redis_client import SendAhead, sync_client
from hean.topology import PULSE_PERIOD_S

log = logging.getLogger(__name__)


def start_heartbeat(app: Flask) -> None:
    """Start the heartbeat greenlet: one SET with a 2 s expiry every pulse period."""
    sio: Any = app.extensions["socketio"]
    clients = app.extensions["hean_connected_clients"]
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> None:
        # the SET's reply is read at the next beat, not waited for (one wake-up a beat, not two)
        sender = SendAhead(sync_client())
        failures = FailureLog(log)  # ten beats a second: one line, then one every 10 s
        while True:
            body = json.dumps({"ts": time.time(), "clients": clients(), "pid": pid, "host": host})
            try:
                sender.send("SET", WEB_HEARTBEAT_KEY, body, "PX", 2000)
            except Exception as exc:  # Redis away: the pulse notices; keep beating
                failures.failed(
                    "event=web_heartbeat_failed error=%s", type(exc).__name__, level=logging.WARNING
                )
            else:
                failures.recovered("event=web_heartbeat_recovered")
            sio.sleep(PULSE_PERIOD_S)

    sio.start_background_task(beat)
