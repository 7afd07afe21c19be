"""`hean up` as a user runs it: private Redis, every process supervised, a command end to end,
a crashed process restarted, and a SIGTERM that leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
import socketio

from hean.processes import process_names
from support import UpProcess, hean_up_env, wait_for


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    return hean_up_env(tmp_path / "hean-home")


def test_hean_up_runs_the_system_and_stops_cleanly(up_env: dict[str, str], tmp_path: Path) -> None:
    usable = sorted(os.sched_getaffinity(0))
    hot, rest = {usable[0]}, {usable[-1]}
    up_env["HEAN_CPU_AFFINITY"] = f"redis={usable[0]};web={usable[0]};*={usable[-1]}"
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        match = wait_for(
            lambda: re.search(r"ready: dashboard (http://\S+)/#token=(\S+)", up.output()),
            120,
            "hean up to print the dashboard URL",
        )
        assert isinstance(match, re.Match)
        url, token = match.group(1), match.group(2)
        home = Path(up_env["HEAN_HOME"])
        # the generated token is stored with mode 0600 and is the one printed
        token_file = home / "token"
        assert token_file.read_text().strip() == token
        assert token_file.stat().st_mode & 0o777 == 0o600
        # a private Redis was started with its data under .hean/redis (AOF on)
        assert "redis: private server" in up.output()
        wait_for(lambda: (home / "redis" / "appendonlydir").is_dir(), 10, "the AOF directory")

        wait_for(lambda: set(up.pids()) == set(process_names()), 60, "every process RUNNING")

        # HEAN_CPU_AFFINITY: each process pinned as it started, then became the real command
        redis_pid = int(re.search(r"redis: private server pid=(\d+)", up.output()).group(1))  # type: ignore[union-attr]
        pinned = {name: set(psutil.Process(pid).cpu_affinity()) for name, pid in up.pids().items()}
        assert set(psutil.Process(redis_pid).cpu_affinity()) == hot
        assert pinned["web"] == hot
        assert all(cpus == rest for name, cpus in pinned.items() if name != "web"), pinned
        assert psutil.Process(up.pids()["web"]).cmdline()[1:3] == ["-m", "web"]
        # HEAN_NICE's default: the pulse (beat and its worker) goes first when the CPUs are busy
        nice = {name: psutil.Process(pid).nice() for name, pid in up.pids().items()}
        if os.geteuid() == 0:
            assert nice["beat"] == nice["worker-pulse"] == -10, nice
        else:  # not allowed: a warning, and the process runs anyway
            assert "cannot set niceness -10" in (home / "logs" / "beat.log").read_text()
        assert nice["web"] == nice["worker-engine"] == os.getpriority(os.PRIO_PROCESS, 0)

        client = socketio.Client(reconnection=False)
        results: list[dict[str, object]] = []
        client.on("command_result", results.append)
        client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        request_id = uuid.uuid4().hex
        ack = client.call("command", {"command": "start", "params": {}, "request_id": request_id})
        assert ack["accepted"] is True
        wait_for(lambda: results, 30, "the command result")
        assert results[0]["request_id"] == request_id and results[0]["success"] is True
        assert results[0]["result"]["state"] == "RUNNING"  # type: ignore[index]
        client.disconnect()

        # a crashed process is restarted by the supervisor
        beat_pid = up.pids()["beat"]
        os.kill(beat_pid, signal.SIGKILL)
        wait_for(lambda: up.pids().get("beat", beat_pid) != beat_pid, 30, "beat to be restarted")
        assert set(psutil.Process(up.pids()["beat"]).cpu_affinity()) == rest  # a restart keeps its CPUs

        descendants = psutil.Process(up.process.pid).children(recursive=True)
        assert len(descendants) >= len(process_names()) + 2  # + redis + supervisord
        started = time.monotonic()
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 10.0, "hean up must exit within 10 s of SIGTERM"
        time.sleep(0.2)
        left = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"orphans left behind: {[(p.pid, p.name()) for p in left]}"
        assert "stopped" in up.output().splitlines()[-1]
    finally:
        up.finish()


def test_hean_up_refuses_a_taken_port(up_env: dict[str, str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(up_env["HEAN_PORT"])))
        blocker.listen()
        up = UpProcess(up_env, tmp_path / "up.log")
        try:
            assert up.process.wait(timeout=30) == 2
            assert f"port 127.0.0.1:{up_env['HEAN_PORT']} is in use" in up.output()
            assert "HEAN_PORT" in up.output()
        finally:
            up.finish()


@pytest.mark.parametrize(
    ("variable", "spec", "message"),
    [
        ("HEAN_CPU_AFFINITY", "web=0;nope=1", "unknown process 'nope'"),
        ("HEAN_CPU_AFFINITY", "web=4096", "names CPU(s) [4096] that are not available"),
        ("HEAN_CPU_AFFINITY", "web", "should look like name=cpus"),
        ("HEAN_NICE", "beat=-99", "beat=-99 is outside -20..19"),
    ],
)
def test_hean_up_refuses_a_bad_placement(
    up_env: dict[str, str], tmp_path: Path, variable: str, spec: str, message: str
) -> None:
    up_env[variable] = spec
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        assert up.process.wait(timeout=30) == 2
        assert f"error: {variable}: " in up.output()
        assert message in up.output()
        assert "redis: private server" not in up.output()  # refused before starting anything
    finally:
        up.finish()


def test_hean_up_uses_redis_url_when_it_answers(
    up_env: dict[str, str], tmp_path: Path, redis_url: str
) -> None:
    up_env["REDIS_URL"] = redis_url
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        wait_for(lambda: "ready: dashboard" in up.output(), 120, "hean up to be ready")
        assert "redis: using REDIS_URL" in up.output()
        assert "private server" not in up.output()
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=15) == 0
    finally:
        up.finish()
