"""Flower as `hean up` runs it (`python -m workers flower`, workers/monitor.py) captures the
workers' events again soon after a Redis outage. Flower's own capture doubles its wait after each
failed try, without a bound (1, 2, 4, 8, 16, 32 s, each try itself taking seconds while Redis is
away): after this test's 75 s outage it saw events again 18 s after Redis came back (one run of
this test with `celery -A workers flower`), and 1.5 s as `hean up` runs it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, free_port
from support import ManagedProcess, own_system_env, wait_for

OUTAGE_S = 75.0

#: A client of HEAN's Celery app that sends a task-received event every 0.2 s, as a worker
#: does, reconnecting at once after a failure.
SENDER = """
import time
from celery.events import EventDispatcher
from workers.app import app
n = 0
while True:
    try:
        with app.connection() as connection:
            dispatcher = EventDispatcher(connection, hostname="probe@test")
            while True:
                n += 1
                dispatcher.send("task-received", uuid=f"probe-{n}", name="probe")
                time.sleep(0.2)
    except Exception:
        time.sleep(0.2)
"""


def _received_since(url: str, password: str, since: float) -> bool | None:
    """Whether Flower lists a probe event sent after `since` (None: Flower did not answer)."""
    auth = base64.b64encode(f"hean:{password}".encode()).decode()
    request = urllib.request.Request(url + "/api/tasks?limit=500", headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            tasks: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return any((task.get("received") or 0) > since for task in tasks.values())


def test_flower_sees_events_again_within_seconds_of_redis_coming_back(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    port, token = free_port(), "flower-test-" + os.urandom(6).hex()
    env = own_system_env(
        tmp_path / "home",
        server.url,
        free_port(),
        token,
        FLOWER_ADDRESS="127.0.0.1",
        FLOWER_PORT=str(port),
        FLOWER_BASIC_AUTH=f"hean:{token}",
    )
    flower_spec = next(spec for spec in PROCESSES if spec.name == "flower")
    assert flower_spec.argv(sys.executable)[1:4] == ["-m", "workers", "flower"]
    flower = ManagedProcess("flower-outage", flower_spec.argv(sys.executable), env, tmp_path)
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.time()
        wait_for(lambda: _received_since(url, token, started), 90, "Flower to list the probe's events")

        os.kill(server.pid or 0, signal.SIGKILL)
        wait_for(lambda: not server.running(), 10, "Redis to die")
        time.sleep(OUTAGE_S)
        server.restart()
        back = time.time()
        wait_for(
            lambda: _received_since(url, token, back), 60, "Flower to list events sent after Redis came back"
        )
        blind_s = time.time() - back
        # at most 2 s between Flower's tries, plus the sender's reconnect and this poll; Flower's
        # own capture was asleep then, 18 s more
        assert blind_s < 12, f"Flower saw events again {blind_s:.1f} s after Redis came back"
        log = flower.log_path.read_text(errors="replace")
        assert "event=flower_events_lost" in log or "event=flower_events_unreachable" in log, log[-2000:]
        assert "event=flower_events_captured" in log, log[-2000:]
    finally:
        sender.kill()
        sender.wait()
        flower.stop()
        server.stop()
