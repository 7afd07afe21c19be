"""Probes of the modules the library can reach itself: Redis, the database, the exchange
adapter, the web process's heartbeat and the Celery workers' heartbeats."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis

from hean.core.system.health_monitor import Probe, Unreachable

#: Written by the web process every 100 ms: {ts, clients, pid, host} (web/heartbeat.py).
WEB_HEARTBEAT_KEY = "hean:web:heartbeat"
#: Written by every Celery worker every second: hean:worker:<node name> -> timestamp.
WORKER_HEARTBEAT_PREFIX = "hean:worker:"
WEB_STALE_S = 0.3  # three heartbeat periods (a dead process on this host is seen at once)
WORKER_STALE_S = 3.0


def redis_probe(client: redis.Redis) -> Probe:
    def check() -> dict[str, Any]:
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise Unreachable(f"redis: {exc}") from exc
        return {}

    return Probe("redis", check, reconnect=client.connection_pool.disconnect)


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


def web_probe(client: redis.Redis) -> Probe:
    """The web process's heartbeat: its age and connected clients; on the same host a web
    process that is gone is DISCONNECTED at once, without waiting for the heartbeat to age."""
    here = socket.gethostname()

    def check() -> dict[str, Any]:
        raw = client.get(WEB_HEARTBEAT_KEY)
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

    return Probe("frontend_socket", check)


def workers_probe(client: redis.Redis) -> Probe:
    def check() -> dict[str, Any]:
        now = time.time()
        nodes = {}
        for key in client.scan_iter(match=WORKER_HEARTBEAT_PREFIX + "*", count=100):
            raw = client.get(key)
            if raw is not None:
                name = key.decode()[len(WORKER_HEARTBEAT_PREFIX) :]
                nodes[name] = round((now - float(raw)) * 1000.0, 1)
        if not nodes:
            raise Unreachable("no Celery worker heartbeat")
        stale = sorted(n for n, age in nodes.items() if age > WORKER_STALE_S * 1000)
        if stale:
            raise RuntimeError(f"stale worker heartbeats: {', '.join(stale)}")
        return {"age_ms": nodes}

    return Probe("workers", check)


def db_probe() -> Probe:
    from hean import db

    def check() -> dict[str, Any]:
        db.ping()
        return {"url": db.redacted_url()}

    return Probe("db", check, reconnect=db.reset)


def exchange_probe() -> Probe:
    from hean.exchange import get_exchange, reset_exchange

    def check() -> dict[str, Any]:
        from hean.exchange import ExchangeUnreachable

        exchange = get_exchange()
        try:
            server_time = exchange.server_time()
        except ExchangeUnreachable as exc:
            raise Unreachable(f"{exchange.name}: {exc}") from exc
        return {"exchange": exchange.name, "skew_ms": round((server_time - time.time()) * 1000.0, 1)}

    return Probe("exchange_api", check, reconnect=reset_exchange)
