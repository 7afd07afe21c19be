"""The web process outlasts running out of file descriptors: eventlet.wsgi.server's accept loop
ended the server (and the process) on EMFILE, so about a thousand idle TCP connections, from
anyone who could reach the port, took every client's connection down with it. Now the accept
waits and goes on (web.server.PatientListener), and the process lifts its soft limit to the
hard one. A real `python -m web` under a low limit, real connections."""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hean.redis_server import free_port
from support import ManagedProcess, http_ok, wait_for
from web.app import PING_INTERVAL_S, PING_TIMEOUT_S
from web.server import ACCEPT_PAUSE_S, IDLE_TIMEOUT_S, PatientListener, raise_open_files_limit

#: The web process's limit on open files in the test: soft and hard alike, so it cannot lift it.
LIMIT = 128

_RUN_WEB_UNDER_LIMIT = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT})); "
    "runpy.run_module('web', run_name='__main__')"
)


@contextlib.contextmanager
def _web(
    code: str, name: str, base_env: dict[str, str], api_token: str, logs: Path
) -> Iterator[tuple[ManagedProcess, int]]:
    """`python -c code` (a web process set up its way) on a free port, once it answers; stopped after."""
    port = free_port()
    env = dict(base_env, HEAN_API_TOKEN=api_token, HEAN_PORT=str(port))
    web = ManagedProcess(name, [sys.executable, "-c", code], env, logs)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/system/health"), 60, "the web process")
        yield web, port
    finally:
        web.stop()


def _connect_many(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing (non-blocking connects: those past the listener's
    backlog wait in the kernel without holding this test up)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        held.append(sock)
    return held


def test_the_web_process_outlasts_running_out_of_descriptors(
    base_env: dict[str, str], api_token: str, tmp_path: Path
) -> None:
    held: list[socket.socket] = []
    with _web(_RUN_WEB_UNDER_LIMIT, "web-few-fds", base_env, api_token, tmp_path) as (web, port):
        try:
            assert f"open_files_limit={LIMIT}" in web.log_text()
            held = _connect_many(port, 2 * LIMIT)
            wait_for(
                lambda: "event=accept_failed error=EMFILE" in web.log_text(),
                30,
                "accept to run out of descriptors",
            )
            time.sleep(1.0)
            assert web.alive(), web.log_text()[-3000:]
            assert f"open_files_limit={LIMIT} note=raise the hard limit" in web.log_text()
            assert web.log_text().count("event=accept_failed") == 1  # at most one line every 10 s
            for sock in held:
                sock.close()
            held = []
            health = f"http://127.0.0.1:{port}/api/system/health"
            wait_for(lambda: http_ok(health), 30, "the web process to answer again")
            wait_for(lambda: "event=accept_recovered failures=" in web.log_text(), 10, "the recovery's line")
            assert web.alive() and "Traceback" not in web.log_text()
        finally:
            for sock in held:
                sock.close()


#: `python -m web` with the idle timeout cut to 2 s (the module's constant, set before it serves).
_RUN_WEB_WITH_SHORT_IDLE = (
    "import eventlet; eventlet.monkey_patch(); import runpy, web.server; "
    "web.server.IDLE_TIMEOUT_S = 2.0; runpy.run_module('web', run_name='__main__')"
)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` (EOF, or a reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_a_connection_that_sends_nothing_is_closed(
    base_env: dict[str, str], api_token: str, tmp_path: Path
) -> None:
    """A connection that never sends its request, or stops halfway, held one of eventlet's
    1,024 connection slots until the client closed it: that many kept every new client waiting.
    The web process closes it after IDLE_TIMEOUT_S of silence (2 s here)."""
    with _web(_RUN_WEB_WITH_SHORT_IDLE, "web-short-idle", base_env, api_token, tmp_path) as (web, port):
        with (
            socket.create_connection(("127.0.0.1", port)) as silent,
            socket.create_connection(("127.0.0.1", port)) as halfway,
        ):
            halfway.sendall(b"GET /api/system/health HTTP/1.1\r\nHost: hean\r\n")  # never ends
            assert _closed_by_server(silent, within=15.0)
            assert _closed_by_server(halfway, within=15.0)
        assert http_ok(f"http://127.0.0.1:{port}/api/system/health") and web.alive()


def test_the_idle_timeout_outlasts_a_live_clients_silence() -> None:
    # a live Engine.IO client answers each ping; between two answers it may send nothing
    assert IDLE_TIMEOUT_S > PING_INTERVAL_S + PING_TIMEOUT_S


class _Failing:
    """A listening socket whose accept fails with the given errors, then returns "accepted"."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.closed = False

    def accept(self) -> tuple[str, str]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "failed on purpose")
        return "accepted", "address"

    def close(self) -> None:
        self.closed = True


def test_the_listener_retries_only_what_says_not_now() -> None:
    pauses: list[float] = []
    failing = _Failing(errno.EMFILE, errno.ECONNABORTED, errno.ENOBUFS)
    listener = PatientListener(failing, sleep=pauses.append)
    assert listener.accept() == ("accepted", "address")
    assert pauses == [ACCEPT_PAUSE_S] * 3 and listener.failures == 0
    listener.close()  # everything else is the socket's own
    assert failing.closed

    closed = PatientListener(_Failing(errno.EBADF), sleep=pauses.append)
    with pytest.raises(OSError) as raised:
        closed.accept()  # a closed listener ends the server's loop, as before
    assert raised.value.errno == errno.EBADF


def test_the_soft_limit_is_lifted_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard == resource.RLIM_INFINITY or hard < 64:
            pytest.fail(f"this machine's hard limit on open files is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        assert raise_open_files_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
