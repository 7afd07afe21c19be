"""Shared benchmark plumbing: a private Redis and HEAN processes started like `hean up` does."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from hean.affinity import DEFAULT_NICE, NICE_ENV, REDIS, for_process, parse_affinity, parse_nice, pinned_argv
from hean.affinity import ENV as AFFINITY_ENV
from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, die_with_parent, free_port, redis_answers
from hean.testing.raw_socketio import RawSocketIO

REPO_ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Stack:
    """Redis (REDIS_URL if it answers, else private) plus the named HEAN processes."""

    def __init__(self, names: list[str], redis_options: dict[str, Any] | None = None, **env: str) -> None:
        """`redis_options`: PrivateRedis's keyword arguments, for the private server."""
        self.home = Path(tempfile.mkdtemp(prefix="hean-bench-"))
        self._redis: PrivateRedis | None = None
        self.cpus = parse_affinity(env.get(AFFINITY_ENV, os.environ.get(AFFINITY_ENV, "")))
        self.nice = parse_nice(env.get(NICE_ENV, os.environ.get(NICE_ENV, DEFAULT_NICE)))
        url = os.environ.get("REDIS_URL", "")
        if not (url and redis_answers(url)):
            self._redis = PrivateRedis(
                self.home / "redis", cpus=for_process(REDIS, self.cpus), **(redis_options or {})
            )
            url = self._redis.start()
        self.redis_url = url
        self.port = free_port()
        self.token = "bench-" + os.urandom(8).hex()
        self.env = {
            **os.environ,
            "REDIS_URL": url,
            "HEAN_HOME": str(self.home),
            "HEAN_PORT": str(self.port),
            "HEAN_API_TOKEN": self.token,
            "HEAN_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            **env,  # the caller's settings win, the log level too
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        specs = {spec.name: spec for spec in PROCESSES}
        for name in names:
            self.spawn(name, specs[name].argv(sys.executable))
        if "web" in names:
            wait_http(self.url + "/api/system/health")

    def spawn(
        self, name: str, argv: list[str], pin_as: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as `name`, pinned like process `pin_as` (default: `name`) if so configured,
        with the stack's environment plus `env`."""
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        argv = pinned_argv(sys.executable, pin_as or name, argv, self.cpus, self.nice)
        # a benchmark that dies (an exception, a SIGKILL) takes its processes with it: the
        # kernel sends each SIGTERM (its Celery workers ran on, reconnecting, for 15 minutes)
        process = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.processes[name] = process
        return process

    def spawn_bare_heartbeat(self, times_key: str = "") -> None:
        """The floor of a 100 ms heartbeat (benchmarks/bare_beat.py) as processes "bare worker"
        and "bare beat", pinned like beat; with `times_key`, its no-op tasks' start times go to
        that Redis list."""
        for role in ("worker", "beat"):
            self.spawn_bare(role, times_key)

    def spawn_bare(self, role: str, times_key: str = "") -> subprocess.Popen[bytes]:
        """One process of that floor, "worker" or "beat", as process "bare <role>"."""
        env = {
            "PYTHONPATH": str(Path(__file__).resolve().parent),
            "BARE_BEAT_HOME": str(self.home),
            "BARE_BEAT_TIMES": times_key,
        }
        argv = [sys.executable, "-m", "celery", "-A", "bare_beat", role, "-l", "warning"]
        if role == "worker":
            argv += ["-P", "solo", "-E", "-Q", "bare", "--without-gossip", "--without-mingle"]
        return self.spawn(f"bare {role}", argv, pin_as="beat", env=env)

    def pids(self) -> dict[str, int]:
        """The processes' ids by name, with the private Redis (if any) as "redis"."""
        pids = {name: process.pid for name, process in self.processes.items()}
        if self._redis is not None and self._redis.pid is not None:
            pids["redis"] = self._redis.pid
        return pids

    def close(self, keep: bool = False) -> None:
        """Stop every process and Redis, then delete the stack's directory (a 30 s run at 25,000
        orders/s leaves about 1 GB there: database, AOF, logs), unless `keep` or
        HEAN_BENCH_KEEP is set, or the benchmark failed (`stack`): then say where it is."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._redis is not None:
            self._redis.stop()
        if keep or os.environ.get("HEAN_BENCH_KEEP"):
            print(f"kept {self.home} (logs, database, Redis data)", file=sys.stderr)
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(keep=exc_type is not None)


@contextlib.contextmanager
def stack(names: list[str], **env: str) -> Iterator[Stack]:
    s = Stack(names, **env)
    with s:
        yield s


class CpuMeter:
    """CPU used by processes (each alone, not its children) and by the machine, since creation."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._sample()

    @staticmethod
    def _process_seconds(pid: int) -> float:
        try:
            return float(sum(psutil.Process(pid).cpu_times()[:2]))
        except psutil.Error:
            return 0.0

    def _sample(self) -> tuple[float, dict[str, float], Any]:
        seconds = {name: self._process_seconds(pid) for name, pid in self.pids.items()}
        return time.perf_counter(), seconds, psutil.cpu_times()

    def shares(self) -> dict[str, float]:
        """Each process's CPU since creation, in % of one CPU."""
        (t0, before, _), (t1, after, _) = self._start, self._sample()
        return {name: 100 * (after[name] - before[name]) / (t1 - t0) for name in self.pids}

    def report(self) -> str:
        """One line: each process's CPU in % of one CPU, the machine's busy and steal time."""
        (t0, before, m0), (t1, after, m1) = self._start, self._sample()
        wall = t1 - t0
        parts = [f"{name} {100 * (after[name] - before[name]) / wall:.0f}%" for name in self.pids]
        busy, steal = busy_and_steal(m0, m1)
        cpus = psutil.cpu_count() or 1
        return (
            f"CPU (% of one CPU): {', '.join(parts)}; machine busy {busy:.0f}% of {cpus} CPUs, "
            f"steal {steal:.1f}%"
        )


def busy_and_steal(before: Any, after: Any) -> tuple[float, float]:
    """The machine's busy and steal time between two `psutil.cpu_times()`, in % of all its CPUs
    (a stall while the host took the CPUs, steal, is the machine's, not the system's)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    steal = getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0)
    return 100 * (total - idle) / total, 100 * steal / total


class RedisStalls:
    """Redis's own latency monitor: events of `threshold_ms` or more (slow commands, AOF writes)
    since creation. Says "not available" when the server refuses CONFIG (a shared REDIS_URL)."""

    def __init__(self, url: str, threshold_ms: int = 1) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self.threshold_ms = threshold_ms
        try:
            self._client.config_set("latency-monitor-threshold", threshold_ms)
            self._client.execute_command("LATENCY", "RESET")
            self.available = True
        except redis.RedisError:
            self.available = False

    def report(self) -> str:
        if not self.available:
            return "Redis stalls: not available"
        rows = self._client.execute_command("LATENCY", "LATEST")
        self._client.close()
        events = []
        for row in rows:  # [event, time, latest ms, max ms, (total ms, count on Valkey 8+)]
            name = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            count = f"{row[5]} x, " if len(row) > 5 else ""
            events.append(f"{name} ({count}max {row[3]} ms)")
        return f"Redis stalls >= {self.threshold_ms} ms: " + (", ".join(events) if events else "none")


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def trading_client(system: Stack) -> RawSocketIO:
    """A client of `system`, connected with its token, whose engine has a BTCUSDT market and runs."""
    client = RawSocketIO(system.url, {"token": system.token})
    market = {"symbol": "BTCUSDT", "bid": "50000", "ask": "50001", "last": "50000.5"}
    for setup in ({"command": "update_market", "params": market}, {"command": "start", "params": {}}):
        client.call("command", setup)
    return client


def open_for_orders(system: Stack, symbol: str = "BTCUSDT") -> None:
    """Ready `system`'s engine for a load of orders: no fees, no rate or open-order limit, a
    `symbol` market, running."""
    from hean.client import Client

    with Client(system.url, system.token) as admin:
        admin.command(
            "risk_adjust", {"fee_rate": "0", "max_orders_per_second": 0, "max_open_orders": 100_000}
        ).wait(60)
        admin.command(
            "update_market", {"symbol": symbol, "bid": "50000", "ask": "50001", "last": "50000.5"}
        ).wait(60)
        admin.command("start").wait(60)
