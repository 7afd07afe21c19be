"""Redis goes away while a worker runs a late-acknowledged task: the workers reconnect.

Celery's recovery detaches kombu's transport from the lost connection, then closes that
connection's channels and acks the running task through them. With kombu's own Redis transport
both raised AttributeError and the worker stopped for good ("Unrecoverable error"); with
workers.transport it is a lost connection like any other. Real processes, our own Redis.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.command_journal import CommandJournal
from hean.config import get_settings
from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, free_port
from support import Client, ManagedProcess, http_json, http_ok, own_system_env, wait_for

WORKERS = ("worker-engine", "worker-llm")
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def outage(tmp_path: Path, logs_dir: Path) -> Iterator[dict[str, Any]]:
    server = PrivateRedis(tmp_path / "redis", port=free_port())
    server.start()
    port = free_port()
    token = "reconnect-" + os.urandom(6).hex()
    env = own_system_env(
        tmp_path / "home",
        server.url,
        port,
        token,
        HEAN_COMMAND_MODULES="custom_commands",
        PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS_DIR), os.environ.get("PYTHONPATH")])),
    )
    specs = {spec.name: spec for spec in PROCESSES}
    started = {
        name: ManagedProcess(f"reconnect-{name}", specs[name].argv(sys.executable), env, logs_dir)
        for name in (*WORKERS, "web")
    }
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(url + "/api/system/health"), 60, "the web process")
        yield {"url": url, "token": token, "server": server, "processes": started}
    finally:
        for process in reversed(started.values()):
            process.stop()
        server.stop()


def send(system: dict[str, Any], command: str, params: dict[str, Any]) -> str:
    request_id = uuid.uuid4().hex
    body = {"command": command, "params": params, "request_id": request_id}

    def accepted() -> tuple[int, Any, Any] | None:
        reply = http_json(system["url"] + "/api/commands", "POST", body, token=system["token"])
        return reply if reply[0] == 202 else None

    _, ack, _ = wait_for(accepted, 60, f"{command} accepted")  # type: ignore[misc]
    assert ack["accepted"] is True, ack
    return request_id


def result(system: dict[str, Any], request_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, record, _ = http_json(f"{system['url']}/api/commands/{request_id}", token=system["token"])
        return record["result"] if status == 200 and record["status"] == "done" else None

    return wait_for(done, timeout, f"the result of {request_id}")  # type: ignore[return-value]


def test_workers_reconnect_when_redis_goes_away_mid_task(outage: dict[str, Any]) -> None:
    server: PrivateRedis = outage["server"]
    assert result(outage, send(outage, "echo", {"text": "before"}))["result"] == {"echo": "before"}
    assert result(outage, send(outage, "start", {}))["success"] is True

    napping = send(outage, "nap", {"seconds": 3})
    journal = redis.Redis.from_url(server.url)
    wait_for(lambda: CommandJournal(journal).state(napping) == "started", 30, "the nap to start")
    journal.close()

    server.stop()  # the nap's message is delivered and not yet acknowledged
    time.sleep(1.0)
    server.start()  # same port, same data (AOF)

    # the nap ran through the outage and finished once; its ack fails and is logged, not fatal
    nap = result(outage, napping)
    assert nap["success"] is True and nap["result"] == {"slept": 3}
    # both workers consume again: a default-queue command and an engine command run
    assert result(outage, send(outage, "echo", {"text": "after"}))["result"] == {"echo": "after"}
    assert result(outage, send(outage, "stop", {}))["result"]["state"] == "STOPPED"
    for name in WORKERS:
        process = outage["processes"][name]
        assert process.alive(), f"{name} died:\n{process.log_text()[-3000:]}"
        assert "Unrecoverable error" not in process.log_text(), process.log_text()[-3000:]
        # running tasks are not cancelled on purpose (celeryconfig.py): no warning each time
        assert "CPendingDeprecationWarning" not in process.log_text(), process.log_text()[-3000:]


def test_after_an_outage_workers_reconnect_soon_and_the_web_listens_before_they_publish(
    outage: dict[str, Any],
) -> None:
    """Celery's own schedule (2 s, then 2 s longer each time, up to 30 s) tried a broker lost for
    10 s three times (at 0, 2 and 6 s) and found it back at 12 s; workers.app.Consumer's (1 s,
    0.5 s longer each time, up to 2 s) tries it at least five times in those 10 s. The web
    process's result listener (python-socketio's: 1 s, then twice as long, up to 60 s) tries
    every 0.25 s. Each logs the outage in a line when it starts, one per 10 s and one when it
    ends; and a result goes live to the client that sent the command, which does not resend."""
    server: PrivateRedis = outage["server"]
    channel = get_settings().socketio_channel
    with Client(outage["url"], outage["token"]) as client:
        assert result(outage, send(outage, "start", {}))["success"] is True
        server.stop()
        time.sleep(10.0)
        server.start()  # same port, same data (AOF)
        back = time.monotonic()
        watcher = redis.Redis.from_url(server.url)
        wait_for(lambda: dict(watcher.pubsub_numsub(channel)).get(channel.encode()), 30, "the web to listen")
        watcher.close()
        request_id = uuid.uuid4().hex
        ack = client.command({"command": "stop", "params": {}, "request_id": request_id})
        assert ack["accepted"] is True, ack
        assert client.result_for(request_id)["result"]["state"] == "STOPPED"
        print(f"a live result {time.monotonic() - back:.2f} s after Redis was back")
    web = outage["processes"]["web"].log_text()
    listened = [int(n) for n in re.findall(r"event=result_listener_subscribed \S+ failures=(\d+)", web)]
    assert len(listened) == 1 and listened[0] >= 10, (listened, web[-3000:])
    assert "Cannot receive from redis" not in web, web[-3000:]  # python-socketio's line, each attempt
    for name in WORKERS:
        log = outage["processes"][name].log_text()
        reconnected = [int(n) for n in re.findall(r"event=broker_reconnected failures=(\d+)", log)]
        assert len(reconnected) == 1 and reconnected[0] >= 5, (name, reconnected, log[-3000:])
        unreachable = re.findall(r"event=broker_unreachable .*retry_in_s=([\d.]+)", log)
        assert 1 <= len(unreachable) <= 3 and all(float(s) <= 2.0 for s in unreachable), (name, unreachable)
        assert "Cannot connect to" not in log, log[-3000:]  # Celery's own line for every attempt
