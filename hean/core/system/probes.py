"""Probes of the modules the library can reach itself: Redis, the database, the exchange
adapter, the web process's heartbeat and the Celery workers' heartbeats."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from hean.core.system.health_monitor import HealthStatus, ModuleFault, Probe, Unreachable
from hean.redis_client import is_out_of_memory, oldest_entry_age_s, text
from hean.topology import HISTORY_FAILURE_KEY, HISTORY_STREAM_KEY, MEMORY_RESERVE_KEY

#: Written by the web process every 100 ms: {ts, clients, pid, host} (web/heartbeat.py).
WEB_HEARTBEAT_KEY = "hean:web:heartbeat"
#: A hash {node name: time of its last beat}: every Celery worker sets its field every second
#: and removes it on a clean (warm) shutdown (workers/app.py). It never expires, so a worker
#: that vanished (killed, host lost) stays listed, DISCONNECTED, until WORKER_RETENTION_S.
WORKER_HEARTBEATS_KEY = "hean:workers"
#: The probes that only read Redis run as one group: one thread, one after another (a thread
#: each cost more CPU than their checks, ten times a second), or run by the pulse itself
#: (`redis_probes(inline=True)`, as the pulse worker does).
REDIS_GROUP = "redis"
WEB_STALE_S = 0.3  # three heartbeat periods (a dead process on this host is seen at once)
WORKER_STALE_S = 3.0
#: A worker silent this long is forgotten (its field is removed by the probe).
WORKER_RETENTION_S = 600.0
#: The db module reads the history writer's state (HistoryCheck) this often, and calls the
#: history this far behind the results a fault: twice the lag at which the writer leaves idle
#: priority to catch up (hean.history.CATCH_UP_LAG_S).
HISTORY_CHECK_EVERY_S = 1.0
HISTORY_LAG_FAULT_S = 60.0
#: The redis module reads Redis's memory this often (MemoryCheck), and calls it a fault from
#: this share of its maxmemory on: full, Redis refuses new commands (maxmemory-policy noeviction).
REDIS_MEMORY_CHECK_EVERY_S = 1.0
REDIS_MEMORY_FAULT_SHARE = 0.9
#: From this share of maxmemory on, the web refuses every command but those that stop or shrink
#: trading (web/intake.py: TAKEN_NEARLY_FULL), so the room left is theirs and the commits of
#: commands already acked: a kill switch is taken until Redis is full.
REDIS_MEMORY_ORDERS_SHARE = 0.95
#: The room the web keeps for such commands beyond that (MEMORY_RESERVE_KEY): a share of
#: maxmemory, at most so many bytes. Redis can still fill (a small limit, another application on
#: a shared server, a limit lowered by hand); a command of TAKEN_NEARLY_FULL refused "out of
#: memory" then frees the reserve and is tried again, and the web makes it again once memory is
#: below REDIS_MEMORY_FAULT_SHARE with it.
MEMORY_RESERVE_SHARE, MEMORY_RESERVE_MAX = 0.02, 16 * 2**20
#: A Redis that refuses to make the reserve (an ACL without SETRANGE on it, a renamed command)
#: is asked again this much later, not at every read.
MEMORY_RESERVE_RETRY_S = 60.0
#: The redis and db modules read the free space of the disk under their data this often.
DISK_CHECK_EVERY_S = 5.0

# Remove a worker's field only if it still holds the beat judged too old: a worker that came
# back under the same name in between keeps its fresh beat.
_FORGET_WORKER = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class RedisReads:
    """The reads of the Redis-only probes in one round trip. Their group runs one probe after
    another in one thread, the redis probe first: it sends PING, the web heartbeat's GET and
    the workers' HGETALL pipelined (`fetch`), and the other two take their replies (`take`).
    (Separately they were three round trips a pulse, thirty a second while nothing else happens.)

    A reply is taken once, and only just after it came: a probe run alone, or after a round
    trip that failed, sends its own command."""

    #: A reply older than this is not taken (the group's probes follow each other at once).
    MAX_AGE_S = 0.05

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._replies: dict[str, Any] = {}
        self._at = 0.0

    def fetch(self) -> None:
        """PING, and the others' reads; raises what PING raises."""
        self._replies = {}
        pipe = self.client.pipeline(transaction=False)
        pipe.ping()
        pipe.get(WEB_HEARTBEAT_KEY)
        pipe.hgetall(WORKER_HEARTBEATS_KEY)
        pong, beat, workers = pipe.execute(raise_on_error=False)
        if isinstance(pong, Exception):
            raise pong
        self._replies, self._at = {WEB_HEARTBEAT_KEY: beat, WORKER_HEARTBEATS_KEY: workers}, time.monotonic()

    def take(self, key: str, read: Callable[[], Any]) -> Any:
        """The reply for `key` that `fetch` got just now, else `read()`; a reply that was an
        error is raised."""
        if key in self._replies:
            reply = self._replies.pop(key)
            if time.monotonic() - self._at < self.MAX_AGE_S:
                if isinstance(reply, Exception):
                    raise reply
                return reply
        return read()


def _take(reads: RedisReads | None, key: str, read: Callable[[], Any]) -> Any:
    """`reads.take(key, read)`, or `read()` for a probe that runs alone (no group's reads)."""
    return read() if reads is None else reads.take(key, read)


def redis_probes(client: redis.Redis, inline: bool = False) -> list[Probe]:
    """The redis, frontend_socket and workers probes (RedisReads: one round trip for the three),
    in one thread of their own, or with `inline` in the pulse's own thread."""
    reads = RedisReads(client)
    probes = [redis_probe(client, reads), web_probe(client, reads), workers_probe(client, reads=reads)]
    for probe in probes:
        probe.inline = inline
    return probes


class PeriodicCheck:
    """A check a probe reads at most every `every_s` (`due`; each `read` calls `_scheduled` to
    set the next time) and judges at every pulse from what it read last (`verdict`)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._due = 0.0

    @property
    def due(self) -> bool:
        return time.monotonic() >= self._due

    def _scheduled(self) -> None:
        self._due = time.monotonic() + self.every_s


def memory_reserve_size(limit: int) -> int:
    """The bytes of MEMORY_RESERVE_KEY under a maxmemory of `limit` (0, none: no reserve)."""
    return min(MEMORY_RESERVE_MAX, int(limit * MEMORY_RESERVE_SHARE))


class MemoryCheck(PeriodicCheck):
    """Redis's memory against its `maxmemory`, read (INFO memory, and the size of the web's
    reserve) at most every `every_s`. Full, Redis refuses every write that adds memory
    (noeviction): new commands are refused, results wait. Its verdict is a fault from
    `fault_share` of the limit on, while there is still room."""

    def __init__(
        self,
        client: redis.Redis,
        every_s: float = REDIS_MEMORY_CHECK_EVERY_S,
        fault_share: float = REDIS_MEMORY_FAULT_SHARE,
        reserve_retry_s: float = MEMORY_RESERVE_RETRY_S,
    ) -> None:
        super().__init__(every_s)
        self.client, self.fault_share, self.reserve_retry_s = client, fault_share, reserve_retry_s
        self._used = self._limit = self._reserve = 0
        #: why Redis refused to make the reserve, until it makes it (None: never refused)
        self.reserve_refused: str | None = None
        self._reserve_retry_at = 0.0

    def read(self) -> None:
        """Read it now (one round trip); an answer without the figures (a server that hides INFO)
        leaves none."""
        self._scheduled()
        pipe = self.client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.strlen(MEMORY_RESERVE_KEY)
        memory, reserve = pipe.execute(raise_on_error=False)
        if isinstance(memory, redis.ResponseError):  # INFO renamed or refused (some managed servers)
            memory = {}
        self._used, self._limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
        self._reserve = reserve if isinstance(reserve, int) else 0

    def keep_reserve(self) -> int:
        """Make the web's reserve (MEMORY_RESERVE_KEY) if the last read found none and memory with
        it stays below `fault_share` of the limit; the bytes it made (0: none made).

        A Redis that filled since the read makes none (the next read decides again). One that
        refuses the write for another reason (an ACL, a renamed command) is asked again
        `reserve_retry_s` later; the first refusal with a new reason raises its ResponseError
        (for the caller to say so once), the ones after it return 0."""
        size = memory_reserve_size(self._limit)
        if self._reserve or not size or not self._used or self._used + size >= self.fault_share * self._limit:
            return 0
        if self.reserve_refused is not None and time.monotonic() < self._reserve_retry_at:
            return 0
        try:
            # zero bytes up to the size: a short command in the AOF, 190 KB of a rewrite for 16 MiB
            self.client.setrange(MEMORY_RESERVE_KEY, size - 1, b"\0")
        except redis.ResponseError as exc:
            if is_out_of_memory(exc):
                return 0
            known, self.reserve_refused = self.reserve_refused == str(exc), str(exc)
            self._reserve_retry_at = time.monotonic() + self.reserve_retry_s
            if known:
                return 0
            raise
        self._reserve, self._used, self.reserve_refused = size, self._used + size, None
        return size

    def release_reserve(self) -> int:
        """Delete the reserve (DEL is taken by a full Redis); the bytes it freed (0: none was there,
        or another process freed it first)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.strlen(MEMORY_RESERVE_KEY)
        pipe.delete(MEMORY_RESERVE_KEY)
        size, deleted = pipe.execute()
        self._reserve = 0
        return int(size) if deleted else 0

    @property
    def share(self) -> float | None:
        """The memory used as a share of maxmemory, as last read (None: no limit, or no figures)."""
        return self._used / self._limit if self._used and self._limit else None

    def verdict(self, detail: dict[str, Any]) -> dict[str, Any]:
        """`detail` with the memory used (and the limit); raises ModuleFault near the limit."""
        if not self._used:
            return detail
        detail = dict(detail, used_memory_mb=round(self._used / 2**20, 1))
        if self._limit:
            detail["maxmemory_mb"] = round(self._limit / 2**20, 1)
            detail["memory_reserve_mb"] = round(self._reserve / 2**20, 1)
            if self._used >= self.fault_share * self._limit:
                raise ModuleFault(
                    f"memory at {100 * self._used / self._limit:.0f}% of its maxmemory "
                    f"({detail['used_memory_mb']:,} of {detail['maxmemory_mb']:,} MiB): from "
                    f"{REDIS_MEMORY_ORDERS_SHARE:.0%} on the web takes only control commands and "
                    "cancels, and full, Redis refuses every new command (the web frees its reserve, "
                    "memory_reserve_mb, for one of those), until memory is freed (the history "
                    "writer frees what it has written: see the db module) or maxmemory is raised",
                    detail,
                )
        return detail


class DiskCheck(PeriodicCheck):
    """The free space of the disk under `path` (read at most every `every_s`; nothing while the
    path does not exist on this host): a fault below `min_free_bytes`, naming what stops when it
    is full (`stops`)."""

    def __init__(
        self, path: Path, stops: str, min_free_bytes: int | None = None, every_s: float = DISK_CHECK_EVERY_S
    ) -> None:
        if min_free_bytes is None:
            from hean.config import get_settings

            min_free_bytes = get_settings().disk_min_free_mb * 2**20
        super().__init__(every_s)
        self.path, self.stops, self.min_free_bytes = path, stops, min_free_bytes
        self._free: int | None = None

    def read(self) -> None:
        self._scheduled()
        try:
            self._free = shutil.disk_usage(self.path).free
        except OSError:  # not on this host (another container's disk), or gone
            self._free = None

    def verdict(self, detail: dict[str, Any]) -> dict[str, Any]:
        """`detail` with the disk's free MiB; raises ModuleFault when it is short of room."""
        if self._free is None:
            return detail
        detail = dict(detail, disk_free_mb=round(self._free / 2**20))
        if self._free < self.min_free_bytes:
            raise ModuleFault(
                f"{detail['disk_free_mb']:,} MiB free on the disk under {self.path} (less than "
                f"{self.min_free_bytes // 2**20:,}, HEAN_DISK_MIN_FREE_MB): {self.stops} when it is full",
                detail,
            )
        return detail


def private_redis_disk() -> DiskCheck | None:
    """The disk under the private Redis of `hean up` on this host (its data directory, while
    `hean up` records its URL), else None: an external server's disk is not ours to see."""
    from hean.config import get_settings

    settings = get_settings()
    if not settings.redis_url_file.exists():
        return None
    return DiskCheck(settings.home / "redis", "Redis stops (it cannot append to its AOF)")


def redis_probe(client: redis.Redis, reads: RedisReads | None = None) -> Probe:
    """PING (with the other Redis probes' reads), Redis's memory once a second (MemoryCheck),
    and the disk under a private Redis on this host every few seconds (DiskCheck)."""
    memory, disk = MemoryCheck(client), private_redis_disk()

    def check() -> dict[str, Any]:
        try:
            if reads is None:
                client.ping()
            else:
                reads.fetch()
            if memory.due:
                memory.read()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise Unreachable(f"redis: {exc}") from exc
        if disk is None:
            return memory.verdict({})
        if disk.due:
            disk.read()
        return disk.verdict(memory.verdict({}))

    return Probe("redis", check, reconnect=client.connection_pool.disconnect, group=REDIS_GROUP)


def _process_gone(pid: int) -> bool:
    """True when `pid` has exited on this host (including a zombie its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except (OSError, IndexError):  # no /proc (not Linux): signal 0 is all we know
        return False


def web_probe(client: redis.Redis, reads: RedisReads | None = None) -> Probe:
    """The web process's heartbeat: its age and connected clients; on the same host a web
    process that is gone is DISCONNECTED at once, without waiting for the heartbeat to age."""
    here = socket.gethostname()

    def check() -> dict[str, Any]:
        raw = _take(reads, WEB_HEARTBEAT_KEY, lambda: client.get(WEB_HEARTBEAT_KEY))
        if raw is None:
            raise Unreachable("no heartbeat from the web process")
        beat = json.loads(raw)
        age = time.time() - float(beat["ts"])
        pid = int(beat["pid"])
        if beat.get("host") == here and _process_gone(pid):
            raise Unreachable(f"web process pid {pid} is gone")
        if age > WEB_STALE_S:
            raise Unreachable(f"web heartbeat is {age * 1000:.0f} ms old")
        return {"age_ms": round(age * 1000.0, 1), "clients": beat["clients"], "pid": pid}

    return Probe("frontend_socket", check, group=REDIS_GROUP)


def workers_probe(
    client: redis.Redis, retention_s: float = WORKER_RETENTION_S, reads: RedisReads | None = None
) -> Probe:
    """Every Celery worker by its heartbeat: HEALTHY while it beats, DISCONNECTED (with the age
    of its last beat) once silent for WORKER_STALE_S, forgotten after `retention_s`. The module
    is UNHEALTHY while any worker is DISCONNECTED, and DISCONNECTED when none beats."""
    forget = client.register_script(_FORGET_WORKER)

    def check() -> dict[str, Any]:
        now = time.time()
        workers: dict[str, dict[str, Any]] = {}
        beats = _take(reads, WORKER_HEARTBEATS_KEY, lambda: client.hgetall(WORKER_HEARTBEATS_KEY))
        for raw_name, raw_beat in beats.items():
            name, last_seen = text(raw_name), float(raw_beat)
            age_s = now - last_seen
            if age_s > retention_s:
                forget(keys=[WORKER_HEARTBEATS_KEY], args=[raw_name, raw_beat])
                continue
            silent = age_s > WORKER_STALE_S
            workers[name] = {
                "status": (HealthStatus.DISCONNECTED if silent else HealthStatus.HEALTHY).value,
                "age_ms": round(age_s * 1000.0, 1),
                "last_seen": last_seen,
            }
        detail = {"workers": dict(sorted(workers.items()))}
        gone = [
            f"{name} (last seen {worker['age_ms'] / 1000:.1f} s ago)"
            for name, worker in detail["workers"].items()
            if worker["status"] == HealthStatus.DISCONNECTED.value
        ]
        if len(gone) == len(workers):
            raise Unreachable("no Celery worker heartbeat" + (f": {', '.join(gone)}" if gone else ""), detail)
        if gone:
            raise ModuleFault(f"workers gone: {', '.join(gone)}", detail)
        return detail

    return Probe("workers", check, group=REDIS_GROUP)


class HistoryCheck(PeriodicCheck):
    """Whether the history writer gets the results into the database, read from Redis at most
    every `every_s`: a database that takes no writes (its disk full, a read-only replica) still
    answers the db module's reads. Its verdict: the writer's published failure
    (HISTORY_FAILURE_KEY), or the history more than `lag_fault_s` behind the results (the age of
    the oldest entry the writer has not written: a writer that is not keeping up, or not running)."""

    def __init__(
        self,
        client: redis.Redis,
        every_s: float = HISTORY_CHECK_EVERY_S,
        lag_fault_s: float = HISTORY_LAG_FAULT_S,
    ) -> None:
        super().__init__(every_s)
        self.client, self.lag_fault_s = client, lag_fault_s
        self._fault: str | None = None
        self._lag_s: float | None = None

    def read(self) -> None:
        """Read the writer's state now; a Redis that does not answer leaves the last verdict
        (the redis module reports Redis)."""
        self._scheduled()
        pipe = self.client.pipeline(transaction=False)
        pipe.get(HISTORY_FAILURE_KEY)
        pipe.xrange(HISTORY_STREAM_KEY, count=1)
        try:
            failure, oldest = pipe.execute()
        except (redis.RedisError, OSError):
            return
        now = time.time()
        self._lag_s = round(oldest_entry_age_s(oldest, now), 1)
        self._fault = None
        if failure is not None:
            failed = json.loads(failure)
            self._fault = (
                f"history writer failing for {now - float(failed['since']):.0f} s "
                f"({failed['failures']} attempts): {failed['error']}"
            )
        elif self._lag_s > self.lag_fault_s:
            self._fault = (
                f"history {self._lag_s:.0f} s behind the results: its writer is not keeping up or not running"
            )

    def verdict(self, detail: dict[str, Any]) -> dict[str, Any]:
        """`detail` with the history's lag; raises ModuleFault while the writer fails or lags."""
        if self._lag_s is not None:
            detail = dict(detail, history_lag_s=self._lag_s)
        if self._fault is not None:
            raise ModuleFault(self._fault, detail)
        return detail


def db_probe(client: redis.Redis | None = None) -> Probe:
    """The database: a read (`hean.db.ping`), with `client` the history writer's writes
    (HistoryCheck), and for an SQLite file the disk under it (DiskCheck)."""
    from hean import db

    url: list[str] = []  # redacted once (rendering it was 5% of the idle pulse's CPU)
    history = HistoryCheck(client) if client is not None else None
    disk: list[DiskCheck | None] = []  # found at the first good read

    def verdict() -> dict[str, Any]:
        detail: dict[str, Any] = {"url": url[0]}
        if disk[0] is not None:
            detail = disk[0].verdict(detail)
        return detail if history is None else history.verdict(detail)

    def check() -> dict[str, Any]:
        db.ping()
        if not url:
            url.append(db.redacted_url())
        if not disk:
            path = db.sqlite_file(db.database())
            stops = "the history writer's writes fail (and what they would free waits in Redis)"
            disk.append(DiskCheck(Path(path).resolve().parent, stops) if path else None)
        if disk[0] is not None and disk[0].due:
            disk[0].read()
        if history is not None and history.due:
            history.read()
        return verdict()

    def quick() -> dict[str, Any] | None:
        # an SQLite file unchanged since its last good read: answered without the probe's thread
        if not url or not disk or not db.unchanged_since_verified():
            return None
        if (history is not None and history.due) or (disk[0] is not None and disk[0].due):
            return None
        return verdict()

    def reconnect() -> None:
        url.clear()
        db.reset()

    return Probe("db", check, reconnect=reconnect, quick=quick)


def exchange_probe() -> Probe:
    """The exchange's clock; the paper exchange's is this machine's (no I/O: the pulse reads it
    itself, without a thread)."""
    from hean.exchange import PaperExchange, get_exchange, reset_exchange

    def check() -> dict[str, Any]:
        from hean.exchange import ExchangeUnreachable

        exchange = get_exchange()
        try:
            server_time = exchange.server_time()
        except ExchangeUnreachable as exc:
            raise Unreachable(f"{exchange.name}: {exc}") from exc
        return {"exchange": exchange.name, "skew_ms": round((server_time - time.time()) * 1000.0, 1)}

    in_process = isinstance(get_exchange(), PaperExchange)
    return Probe("exchange_api", check, reconnect=reset_exchange, inline=in_process)
