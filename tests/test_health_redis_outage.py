"""Redis stopped and restarted under a running system: our own private Redis on a fixed port
(not the session's), a web process, a pulse worker and celery beat. While Redis is down the
health view says so (503, redis not ok); once it is back, the pulse worker and beat reconnect
on their own and fresh pulses show Redis HEALTHY again."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, free_port
from support import ManagedProcess, http_json, own_system_env, wait_for


@pytest.fixture
def outage_system(tmp_path: Path, logs_dir: Path) -> Iterator[dict[str, Any]]:
    server = PrivateRedis(tmp_path / "redis", port=free_port())
    server.start()
    port = free_port()
    env = own_system_env(tmp_path / "home", server.url, port, "outage-" + os.urandom(6).hex())
    specs = {spec.name: spec for spec in PROCESSES}
    started = [
        ManagedProcess(f"outage-{name}", specs[name].argv(sys.executable), env, logs_dir)
        for name in ("web", "worker-pulse", "beat")
    ]
    try:
        yield {"url": f"http://127.0.0.1:{port}", "server": server}
    finally:
        for process in reversed(started):
            process.stop()
        server.stop()


def fresh_redis_healthy(url: str) -> bool:
    status, body, _ = http_json(url + "/api/system/health/module/redis", timeout=5)
    return status == 200 and body["status"] == "HEALTHY" and body["stale"] is False


def test_redis_stopped_and_restarted_under_the_running_pulse(outage_system: dict[str, Any]) -> None:
    url, server = outage_system["url"], outage_system["server"]
    wait_for(lambda: fresh_redis_healthy(url), 60, "fresh pulses with redis HEALTHY")
    server.stop()
    status, body, _ = wait_for(  # type: ignore[misc]
        lambda: (r := http_json(url + "/api/system/health", timeout=5))[0] == 503 and r, 30, "a 503"
    )
    assert body["status"] == "down" and body["redis"]["ok"] is False
    server.start()  # same port, same data (AOF)
    wait_for(lambda: fresh_redis_healthy(url), 90, "fresh pulses with redis HEALTHY again")
    status, body, _ = http_json(url + "/api/system/health", timeout=5)
    assert status == 200 and body["redis"]["ok"] is True and body["pulse_stale"] is False
