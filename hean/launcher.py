"""`hean up`: start Redis, then supervise every HEAN process under supervisord.

supervisord (a maintained supervisor) does the spawning, logging, restarting with backoff
and group shutdown; this module writes its configuration, watches process states over its
XML-RPC socket, prints them, restarts processes that supervisord gave up on (with a longer
backoff), and tears everything down in order on Ctrl-C / SIGTERM.

The private Redis is supervised here rather than by supervisord: `PrivateRedis` already owns
starting it, waiting until it answers and stopping it; keeping it out of supervisord keeps it
answering before any client starts and stopping after the last one (no priority groups), keeps
it dying with `hean up` (PR_SET_PDEATHSIG), and the watch loop below already wakes every 0.25 s.
When it dies, the loop reaps it and starts it again on the same port (every process's URL
holds), with the same password, from its AOF; the clients reconnect on their own.

`hean up` is its descendants' subreaper (PR_SET_CHILD_SUBREAPER): if supervisord dies without
stopping its programs (SIGKILL, the OOM killer), they become `hean up`'s children instead of
init's, and its shutdown stops them (SIGTERM, then SIGKILL) rather than leaving a web process
acking orders into a Redis that is stopped, holding the ports the next `hean up` needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

import psutil

from hean.affinity import REDIS, AffinityError, for_process, pinned_argv
from hean.auth import ensure_redis_password, ensure_token, write_secret
from hean.config import Settings, env_for_children
from hean.metrics import reset_directory
from hean.processes import PROCESSES, ProcessSpec
from hean.redis_server import (
    PrivateRedis,
    RedisStartError,
    die_with_parent,
    ensure_redis,
    memory_text,
    redact_url,
)

GROUP = "hean"
#: Total budget for a clean shutdown; the issue promises exit within 10 s.
SHUTDOWN_BUDGET_S = 8.0
#: Backoff before `hean up` restarts a process that supervisord marked FATAL.
FATAL_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)
#: Delay before restarting the private Redis after its 1st, 2nd, ... death in a row; a death
#: counts as "in a row" when the server had run less than REDIS_STARTSECS_S.
REDIS_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 15.0)
REDIS_STARTSECS_S = 5.0
#: Once everything runs, `hean up` checks on the private Redis this often (a Popen poll: free)
#: and asks supervisord for its processes' states every STATE_POLL_S (an XML-RPC call: about
#: 3.4 ms of CPU between the two processes; four a second were 1.4% of a core while idle).
REDIS_CHECK_S, STATE_POLL_S = 0.25, 1.0
#: Of the shutdown budget, what a process supervisord left running gets after SIGTERM.
ORPHAN_TERM_S = 5.0

_PR_SET_CHILD_SUBREAPER = 36
#: In HEAN_HOME: locked by the `hean up` that runs on it (and holds its pid).
LOCK_FILE = "up.lock"


def adopt_orphans(on: bool = True) -> None:
    """Make this process (or no longer) the one its orphaned descendants are reparented to
    (Linux; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


class LaunchError(RuntimeError):
    """`hean up` cannot start (port taken, Redis did not start, ...)."""


def lock_home(home: Path) -> IO[str]:
    """Lock `home` for this `hean up` (released when the returned file is closed, or when this
    process dies however it dies). A second `hean up` on the same HEAN_HOME would start a second
    Redis on the same append-only files, talk to the first one's supervisord through the same
    socket, wipe its metrics and, stopping, delete its `redis.url`: it is refused instead."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        handle = open(home / LOCK_FILE, "a+")  # noqa: SIM115 - held until `hean up` ends
    except OSError as exc:
        raise LaunchError(f"cannot use HEAN_HOME={home}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise LaunchError(
            f"another `hean up` (pid {holder}) runs on HEAN_HOME={home}; stop it first, "
            "or give this one a HEAN_HOME of its own"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def listen_problem(host: str, port: int) -> OSError | None:
    """Why nothing could listen on `host`:`port` now (taken, or an address this machine does
    not have or cannot resolve), or None when something could."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def supervisord_config(settings: Settings, python: str, workdir: Path) -> str:
    """The supervisord configuration for every process in `PROCESSES`."""
    home = settings.home.resolve()
    logs = home / "logs"
    sections = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={logs / 'supervisord.log'}",
        "logfile_maxbytes=10MB",
        f"pidfile={home / 'supervisord.pid'}",
        f"childlogdir={logs}",
        "loglevel=info",
        "",
        "[unix_http_server]",
        f"file={home / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        # One group: supervisord stops a group's processes in parallel, so shutdown takes
        # the slowest process's time, not the sum.
        "[group:" + GROUP + "]",
        "programs=" + ",".join(spec.name for spec in PROCESSES),
        "",
    ]
    cpus, nice = settings.cpu_table, settings.nice_table
    for spec in PROCESSES:
        argv = pinned_argv(python, spec.name, spec.argv(python), cpus, nice)
        command = " ".join(_quote(arg) for arg in argv).replace("%", "%%")
        sections += [
            f"[program:{spec.name}]",
            f"command={command}",
            f"directory={workdir}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=4",
            "stopsignal=TERM",
            "stopwaitsecs=5",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={logs / (spec.name + '.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
            "",
        ]
    return "\n".join(sections)


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c.isspace() for c in arg) else arg


@dataclass
class ProcessState:
    name: str
    state: str
    pid: int
    fatal_restarts: int = 0
    next_restart_at: float | None = None


@dataclass
class Launcher:
    """Runs the whole system until told to stop; see the module docstring."""

    settings: Settings
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)
    _redis: PrivateRedis | None = None
    _supervisord: subprocess.Popen[bytes] | None = None
    _stop_requested: bool = False
    _states: dict[str, ProcessState] = field(default_factory=dict)
    _redis_started_at: float = 0.0
    _redis_failures: int = 0
    _redis_restart_at: float | None = None
    _redis_start_failed: bool = False
    _home_lock: IO[str] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        # a closed terminal (SIGHUP) stops it in order too, unless it runs under nohup (ignored)
        stops = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            stops.append(signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in stops}
        adopt_orphans()
        try:
            self._start()
            self._watch()
            return 0
        except LaunchError as exc:
            self.out(f"error: {exc}")
            return 2
        finally:
            self._shutdown()
            adopt_orphans(False)
            if self._home_lock is not None:
                self._home_lock.close()
                self._home_lock = None
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_requested = True

    def _start(self) -> None:
        settings = self.settings
        home = settings.home.resolve()
        self._home_lock = lock_home(home)
        for what, host, port, variables in (
            ("web", settings.host, settings.port, ("HEAN_PORT", "HEAN_HOST")),
            ("Flower", "127.0.0.1", settings.flower_port, ("HEAN_FLOWER_PORT", "HEAN_FLOWER_PORT")),
        ):
            problem = listen_problem(host, port)
            if problem is None:
                continue
            if problem.errno == errno.EADDRINUSE:
                raise LaunchError(f"{what} port {host}:{port} is in use; free it or set {variables[0]}")
            reason = problem.strerror or problem  # e.g. an address this machine does not have
            raise LaunchError(f"{what} cannot listen on {host}:{port}: {reason}; check {variables[1]}")
        try:
            cpus = settings.cpu_table
            settings.nice_table  # noqa: B018 - validated here, applied per process
        except AffinityError as exc:
            raise LaunchError(str(exc)) from exc
        (home / "logs").mkdir(parents=True, exist_ok=True)
        token = ensure_token(settings)

        try:
            url, self._redis = ensure_redis(
                settings.redis_url,
                home / "redis",
                for_process(REDIS, cpus),
                password=lambda: ensure_redis_password(settings),
            )
        except ValueError as exc:  # a hand-edited password file
            raise LaunchError(f"{settings.redis_password_file.resolve()}: {exc}") from exc
        except RedisStartError as exc:
            raise LaunchError(str(exc)) from exc
        if self._redis is not None:
            self._redis_started_at = time.monotonic()
            # the recorded URL carries the password: the Celery CLIs and every process read it
            write_secret(settings.redis_url_file, url + "\n")
            self.out(
                f"redis: private server pid={self._redis.pid} url={redact_url(url)} "
                f"data={home / 'redis'} password_file={settings.redis_password_file.resolve()} "
                f"maxmemory={memory_text(self._redis.maxmemory) if self._redis.maxmemory else 'none'}"
            )
        else:
            self.out(f"redis: using REDIS_URL ({redact_url(url)})")
        effective = settings.model_copy(update={"redis_url": url})

        conf = home / "supervisord.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(supervisord_config(effective, self.python, self.workdir))
        # every process writes its Prometheus series here; the web process's /metrics merges
        # them. Wiped at each start: an earlier run's files would be summed into this one's.
        metrics_dir = home / "metrics"
        reset_directory(metrics_dir)
        env = env_for_children(
            effective,
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            FLOWER_ADDRESS="127.0.0.1",
            FLOWER_PORT=str(settings.flower_port),
            # Flower 2 keeps its API off without auth: user "hean", password = the token.
            FLOWER_BASIC_AUTH=f"hean:{token}",
            PYTHONUNBUFFERED="1",
        )
        self._supervisord = subprocess.Popen(
            [self.python, "-m", "supervisor.supervisord", "-c", str(conf)],
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the children in order
            # `hean up` killed (SIGKILL, OOM): supervisord stops its programs, not run on alone
            preexec_fn=die_with_parent,
        )
        self.out(f"supervisor: pid={self._supervisord.pid} logs={home / 'logs'}")
        self._wait_for_web(token)

    def _wait_for_web(self, token: str, timeout: float = 60.0) -> None:
        base = f"http://{_url_host(self.settings.host)}:{self.settings.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop_requested:
            self._supervise_redis()
            self._poll_states()
            try:
                with urllib.request.urlopen(base + "/api/system/health", timeout=1) as response:
                    if response.status == 200:
                        self.out(f"ready: dashboard {base}/#token={token}")
                        self.out(
                            f"ready: flower http://127.0.0.1:{self.settings.flower_port} "
                            "(user hean, password = the token)"
                        )
                        return
            except OSError:
                pass
            time.sleep(0.25)
        if not self._stop_requested:
            raise LaunchError(
                f"web did not answer on {base} within {timeout:.0f} s; "
                f"see {self.settings.home.resolve() / 'logs' / 'web.log'}"
            )

    def _watch(self) -> None:
        next_poll = 0.0
        while not self._stop_requested:
            if self._supervisord is not None and self._supervisord.poll() is not None:
                raise LaunchError(
                    f"supervisord exited with code {self._supervisord.returncode}; see "
                    f"{self.settings.home.resolve() / 'logs' / 'supervisord.log'}"
                )
            self._supervise_redis()
            if time.monotonic() >= next_poll:
                self._poll_states()
                self._reap_adopted()
                next_poll = time.monotonic() + STATE_POLL_S
            time.sleep(REDIS_CHECK_S)

    def _supervise_redis(self) -> None:
        """Restart the private Redis if it died (see the module docstring)."""
        server = self._redis
        if server is None or self._stop_requested or server.running():  # running() reaps
            return
        now = time.monotonic()
        if self._redis_restart_at is None:
            quick = now - self._redis_started_at < REDIS_STARTSECS_S
            self._redis_failures = self._redis_failures + 1 if quick else 1
            delay = REDIS_BACKOFF_S[min(self._redis_failures - 1, len(REDIS_BACKOFF_S) - 1)]
            self._redis_restart_at = now + delay
            what = "restart failed" if self._redis_start_failed else "exited"
            what += f" pid={server.pid} code={server.returncode}"
            if not self._redis_start_failed:  # a failed start already said why
                what += _exit_reason(server)
            self.out(f"redis: {what}; restarting in {delay:.0f} s on the same port from its AOF")
        if now < self._redis_restart_at:
            return
        try:
            server.restart()
        except RedisStartError as exc:
            self._redis_started_at = now  # a failed start counts as a quick death
            self._redis_restart_at, self._redis_start_failed = None, True
            self.out(f"redis: {exc}")
            return
        self._redis_restart_at, self._redis_start_failed = None, False
        self._redis_started_at = time.monotonic()
        self.out(f"redis: restarted pid={server.pid} url={server.redacted_url}")

    # -- states ---------------------------------------------------------------------------------
    def _rpc(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport

        sock = self.settings.home.resolve() / "supervisor.sock"
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}")
        )

    def _poll_states(self) -> None:
        try:
            infos = cast(list[dict[str, Any]], self._rpc().supervisor.getAllProcessInfo())
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return  # supervisord is still starting
        now = time.monotonic()
        for info in infos:
            name, state, pid = info["name"], info["statename"], int(info["pid"])
            known = self._states.get(name)
            if known is None or known.state != state or known.pid != pid:
                self.out(f"process={name} state={state} pid={pid}")
                known = known or ProcessState(name, state, pid)
                known.state, known.pid = state, pid
                self._states[name] = known
                if state == "RUNNING":
                    known.next_restart_at = None
            if state == "FATAL":
                self._restart_fatal(known, now)

    def _restart_fatal(self, process: ProcessState, now: float) -> None:
        # supervisord stops retrying after startretries; we keep trying, more slowly.
        if process.next_restart_at is None:
            delay = FATAL_BACKOFF_S[min(process.fatal_restarts, len(FATAL_BACKOFF_S) - 1)]
            process.next_restart_at = now + delay
            self.out(f"process={process.name} event=fatal retry_in_s={delay:.0f}")
        elif now >= process.next_restart_at:
            process.fatal_restarts += 1
            process.next_restart_at = None
            with contextlib.suppress(OSError, xmlrpc.client.Fault):
                self._rpc().supervisor.startProcess(f"{GROUP}:{process.name}", False)

    def _own(self) -> set[int]:
        """The children this process started itself (and reaps through their Popen)."""
        own = {self._supervisord.pid} if self._supervisord is not None else set()
        if self._redis is not None and self._redis.pid is not None:
            own.add(self._redis.pid)
        return own

    def _adopted(self) -> list[psutil.Process]:
        """Processes reparented to this one (see the module docstring), with their descendants."""
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return []
        own = self._own()
        adopted = [child for child in children if child.pid not in own]
        return adopted + [grandchild for child in adopted for grandchild in _descendants(child.pid)]

    def _reap_adopted(self) -> None:
        """Reap adopted processes that exited (a Redis rewrite child whose server died, say):
        they are this process's zombies now. One `waitid` that reaps nothing when nothing
        exited; this process's own children are left to their Popen."""
        while True:
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None or exited.si_pid in self._own():
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(exited.si_pid, 0)

    # -- shutdown -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        started = self._supervisord is not None or self._redis is not None
        supervisord, self._supervisord = self._supervisord, None
        if supervisord is not None:
            self.out("stopping: supervised processes")
            descendants = _descendants(supervisord.pid)
            if supervisord.poll() is None:
                supervisord.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    supervisord.wait(timeout=max(0.5, deadline - time.monotonic() - 1.5))
            if supervisord.poll() is None:
                supervisord.kill()
                supervisord.wait()
            _kill_leftovers(descendants)
        orphans = [p for p in self._adopted() if _alive(p)]
        if orphans:
            names = " ".join(sorted({_name(p) for p in orphans}))
            self.out(f"stopping: {len(orphans)} processes supervisord left running ({names})")
            _stop(orphans, min(ORPHAN_TERM_S, max(0.5, deadline - time.monotonic() - 1.5)))
        if self._redis is not None:
            self.out("stopping: redis")
            self._redis.stop(timeout=max(0.5, deadline - time.monotonic()))
            self._redis = None
            with contextlib.suppress(OSError):
                self.settings.redis_url_file.unlink()
        if started:  # not after a refusal to start ("error: ..." is the last word then)
            self.out("stopped")


def _exit_reason(server: PrivateRedis) -> str:
    """What a private Redis that exited said last, and its disk's free space (a full disk stops
    it: under `appendfsync always` an append it cannot write is fatal), for `hean up`'s line."""
    said = server.exit_reason()
    try:
        free = f"{shutil.disk_usage(server.data_dir).free / 2**20:,.0f} MiB free on its disk"
    except OSError:
        free = "its disk's free space unknown"
    return f" ({said}; {free})" if said else f" ({free})"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(process: psutil.Process) -> str:
    """A process's name in `hean up`'s list, from its command line (`-m web`, `-Q engine`)."""
    try:
        line = process.cmdline()
    except psutil.Error:
        return str(process.pid)
    joined = " ".join(line)
    for spec in PROCESSES:
        if " ".join(["-m", spec.module, *spec.args]) in joined:
            return spec.name
    return f"pid={process.pid}"


def _stop(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM, up to `grace_s` to exit, then SIGKILL; reaped if they are this process's children."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    _kill_leftovers(alive)


def _kill_leftovers(processes: list[psutil.Process]) -> None:
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=1.0)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def describe_processes() -> list[str]:
    return [f"{spec.name}: {spec.description}" for spec in PROCESSES]


__all__ = ["LaunchError", "Launcher", "ProcessSpec", "describe_processes", "supervisord_config"]
