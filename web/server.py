"""Serve the web app on eventlet with TCP_NODELAY (the ack budget cannot afford Nagle), on a
listener whose accept outlasts running out of file descriptors."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from hean.config import get_settings
from hean.logs import FailureLog, configure_logging

log = logging.getLogger("hean.web")

#: accept() errors that say "not now" (no descriptor or memory left, or a connection that went
#: away before it was taken) rather than "no more": eventlet.wsgi.server ends on them (the
#: process exits), so PatientListener waits ACCEPT_PAUSE_S and takes the next one instead.
ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
)
ACCEPT_PAUSE_S = 0.1
#: At most one accept_failed line this often while accepts keep failing.
ACCEPT_LOG_EVERY_S = 10.0
#: A connection that sends nothing for this long is closed (eventlet's socket_timeout): one that
#: never finishes its request, or an idle keep-alive, would otherwise hold one of eventlet's 1,024
#: connection slots for good. Longer than a live Engine.IO client's silence (its answer to each
#: ping: web.app.PING_INTERVAL_S + PING_TIMEOUT_S).
IDLE_TIMEOUT_S = 60.0


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


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit (often 1,024 against
    hundreds of thousands: each client holds one) and return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class PatientListener:
    """The listening socket as eventlet.wsgi.server sees it, except that an accept that fails
    for want of descriptors or memory (ACCEPT_RETRY) is retried after a pause instead of ending
    the server: the connected clients go on, and new ones are taken as soon as descriptors free
    up. Before this, about a thousand idle TCP connections (the default limit) ended the web
    process. Failures are logged at most every ACCEPT_LOG_EVERY_S, and the recovery once."""

    def __init__(self, sock: Any, sleep: Callable[[float], Any] = time.sleep) -> None:
        self._sock, self._sleep = sock, sleep
        self.log = FailureLog(log, every_s=ACCEPT_LOG_EVERY_S)

    @property
    def failures(self) -> int:
        return self.log.failures

    def accept(self) -> tuple[Any, Any]:
        while True:
            try:
                accepted = self._sock.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RETRY:
                    raise
                code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                pause = ACCEPT_PAUSE_S
                self.log.failed("event=accept_failed error=%s retry_in_s=%.1f%s", code, pause, _hint(exc))
                self._sleep(pause)
                continue
            self.log.recovered("event=accept_recovered")
            return accepted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _hint(exc: OSError) -> str:
    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return ""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return f" open_files_limit={limit} note=raise the hard limit (ulimit -Hn, systemd LimitNOFILE)"


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
    limit = raise_open_files_limit()
    log.info("event=web_listening host=%s port=%d open_files_limit=%d", host, port, limit)
    patient = PatientListener(listener, sleep=eventlet.sleep)
    eventlet.wsgi.server(
        patient, app, log_output=False, log=logging.getLogger("hean.web.wsgi"), socket_timeout=IDLE_TIMEOUT_S
    )
