"""Serve the web app on eventlet with TCP_NODELAY (the ack budget cannot afford Nagle)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

from hean.config import get_settings
from hean.logs import configure_logging

log = logging.getLogger("hean.web")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> None:
    from hean.gc_policy import freeze_startup_objects
    from web.app import create_app

    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings, async_mode="eventlet")
    from web.heartbeat import start_heartbeat

    start_heartbeat(app)
    # the first ack as fast as the next, without ever holding up the start: a green thread that
    # runs while the listener opens (a database or Redis slow to answer delays no health check)
    threading.Thread(target=app.extensions["hean_intake"].warm_up, name="hean-warm-up", daemon=True).start()
    freeze_startup_objects("web")
    if not is_loopback(settings.host):
        log.warning(
            "event=exposed_bind host=%s note=control needs the token but traffic is not encrypted",
            settings.host,
        )
    serve(app, settings.host, settings.port)


def serve(app: Any, host: str, port: int) -> None:
    """Serve a WSGI app on eventlet (monkey-patched by the caller) with TCP_NODELAY."""
    import eventlet
    import eventlet.wsgi

    from web.fast_ws import install

    install()  # fast unmask, and one write per batch of queued packets (see web.fast_ws)
    listener = eventlet.listen((host, port))
    # Accepted sockets inherit TCP_NODELAY: an ack event followed by the ack value would
    # otherwise wait ~40 ms for the client's delayed ACK.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    log.info("event=web_listening host=%s port=%d", host, port)
    eventlet.wsgi.server(listener, app, log_output=False, log=logging.getLogger("hean.web.wsgi"))
