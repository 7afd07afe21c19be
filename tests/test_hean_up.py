"""`hean up` as a user runs it: private Redis, every process supervised, a command end to end,
a crashed process restarted (Redis included), a Redis nobody gets into without its password,
and a SIGTERM that leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import redis
import socketio

from hean.launcher import listen_problem
from hean.processes import process_names
from hean.redis_server import PrivateRedis, machine_memory, memory_text, redis_answers
from hean.topology import ENGINE_QUEUE
from support import (
    REPO_ROOT,
    Client,
    UpProcess,
    hean_up_env,
    http_json,
    http_ok,
    unauthenticated_client,
    wait_for,
)


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    return hean_up_env(tmp_path / "hean-home")


def test_hean_up_runs_the_system_and_stops_cleanly(up_env: dict[str, str], tmp_path: Path) -> None:
    usable = sorted(os.sched_getaffinity(0))
    hot, rest = {usable[0]}, {usable[-1]}
    up_env["HEAN_CPU_AFFINITY"] = f"redis={usable[0]};web={usable[0]};*={usable[-1]}"
    # an earlier run's Prometheus files: wiped at start, or they would be summed into this run's
    stale = Path(up_env["HEAN_HOME"]) / "metrics" / "counter_99999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 64)
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
        # with its memory limit, half the machine's by default (HEAN_REDIS_MAXMEMORY)
        assert f"maxmemory={memory_text(machine_memory() // 2)}\n" in up.output()
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
        # ... and the history writer last: SCHED_IDLE, allowed to any user
        policies = {name: os.sched_getscheduler(pid) for name, pid in up.pids().items()}
        assert policies["history"] == os.SCHED_IDLE, policies
        assert policies["web"] == policies["worker-engine"] == os.SCHED_OTHER, policies

        client = socketio.Client(reconnection=False)
        results: list[dict[str, object]] = []
        client.on("command_result", results.append)
        client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        request_id = uuid.uuid4().hex
        ack = client.call("command", {"command": "start", "params": {}, "request_id": request_id})
        assert ack["accepted"] is True, ack
        wait_for(lambda: results, 30, "the command result")
        assert results[0]["request_id"] == request_id and results[0]["success"] is True
        assert results[0]["result"]["state"] == "RUNNING"  # type: ignore[index]
        client.disconnect()

        # the pulse reads the room on the disk under the private Redis and the SQLite file
        def disk_free() -> dict[str, object] | None:
            status, body, _ = http_json(url + "/api/system/health/pulse")
            found = body.get("modules", {}) if status == 200 else {}
            free = {
                name: (found.get(name) or {}).get("detail", {}).get("disk_free_mb")
                for name in ("redis", "db")
            }
            return free if all(isinstance(mb, int) and mb > 0 for mb in free.values()) else None

        wait_for(disk_free, 30, "disk_free_mb in the redis and db modules")

        # every process writes its Prometheus series to $HEAN_HOME/metrics; the web merges them
        assert not stale.exists()

        def scraped() -> str | None:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                text = response.read().decode()
            ran = 'hean_commands_total{code="ok",command="start"} 1.0' in text  # the engine worker's
            return text if ran and "hean_commands_enqueued_total" in text else None  # and the web's

        assert "hean_pulses_total" in str(wait_for(scraped, 30, "the processes' series in /metrics"))

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


def _server_pid(url: str) -> int | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def test_hean_up_locks_its_redis_and_restarts_it_when_killed(up_env: dict[str, str], tmp_path: Path) -> None:
    up = UpProcess(up_env, tmp_path / "up.log")
    home = Path(up_env["HEAN_HOME"])
    try:
        match = wait_for(
            lambda: re.search(r"ready: dashboard (http://\S+)/#token=(\S+)", up.output()),
            120,
            "hean up to be ready",
        )
        assert isinstance(match, re.Match)
        url, token = match.group(1), match.group(2)
        wait_for(lambda: set(up.pids()) == set(process_names()), 60, "every process RUNNING")

        # the password is generated into .hean (0600), and the recorded URL (0600) carries it
        password = (home / "redis.password").read_text().strip()
        redis_url = (home / "redis.url").read_text().strip()
        assert len(password) >= 32 and f":{password}@127.0.0.1:" in redis_url
        for secret_file in ("redis.password", "redis.url", "redis/redis.conf", "supervisord.conf"):
            assert (home / secret_file).stat().st_mode & 0o777 == 0o600, secret_file
        port = int(re.search(r"@127\.0\.0\.1:(\d+)/", redis_url).group(1))  # type: ignore[union-attr]

        # without the password nobody gets in: no task can be pushed onto the engine queue
        anonymous = unauthenticated_client(port)
        with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
            anonymous.lpush(ENGINE_QUEUE, '{"headers": {"task": "workers.engine.execute_batch"}}')
        with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
            anonymous.eval("return redis.call('LPUSH', KEYS[1], ARGV[1])", 1, ENGINE_QUEUE, "x")
        anonymous.close()

        # the standard Celery CLI finds the private Redis (and its password) on its own; the
        # workers' configuration it prints shows the broker URL without the password
        cli_env = {k: v for k, v in up_env.items() if k != "REDIS_URL"}
        engine = f"engine@{socket.gethostname()}"  # one destination: the CLI returns on its reply
        ask = [sys.executable, "-m", "celery", "-A", "workers", "inspect", "conf", "-t", "10", "-d", engine]
        for _attempt in range(3):
            # RUNNING is supervisord's word: a broadcast (pub/sub) sent before the worker's
            # consumer subscribed is lost, and the CLI then waits out its -t; ask again
            inspect = subprocess.run(
                ask,
                env=cli_env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if inspect.returncode == 0:
                break
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        assert f"{engine}: OK" in inspect.stdout and "1 node online" in inspect.stdout, inspect.stdout
        assert re.search(r'"broker_url": "redis://:\*+@127\.0\.0\.1:', inspect.stdout), inspect.stdout

        client = Client(url, token)
        try:
            first = client.command({"command": "start", "params": {}, "request_id": uuid.uuid4().hex})
            assert client.result_for(first["request_id"])["success"] is True

            # a write made durable (WAITAOF: in the fsynced AOF), then Redis is SIGKILLed
            owner = redis.Redis.from_url(redis_url)
            owner.set("hean-test:before-kill", "kept")
            assert owner.execute_command("WAITAOF", 1, 0, 5000)[0] == 1
            owner.close()
            old_pid = int(re.search(r"redis: private server pid=(\d+)", up.output()).group(1))  # type: ignore[union-attr]
            supervised = up.pids()
            assert _server_pid(redis_url) == old_pid
            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            # the promise: a new server answers on the same URL within 5 s
            new_pid = wait_for(
                lambda: (pid := _server_pid(redis_url)) not in (None, old_pid) and pid,
                5,
                "a new Redis on the same URL",
            )
            print(f"redis answered again {time.monotonic() - killed_at:.2f} s after SIGKILL")
            assert psutil.Process(up.process.pid) in psutil.Process(int(new_pid)).parents()
            assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() != psutil.STATUS_ZOMBIE
            # a kill leaves no words in its log: the line says the code and the disk's free space
            exited = rf"redis: exited pid={old_pid} code=-9 \([\d,]+ MiB free on its disk\)"
            assert re.search(exited, up.output()), up.output()
            owner = redis.Redis.from_url(redis_url)
            assert owner.get("hean-test:before-kill") == b"kept"  # reloaded from the AOF
            owner.close()

            # every process reconnects on its own: health is back, and a command runs end to end
            wait_for(lambda: http_ok(url + "/api/system/health"), 60, "health to answer 200 again")
            stop = {"command": "stop", "params": {}, "request_id": uuid.uuid4().hex}
            after = client.command(stop)
            if not after["accepted"] and (after.get("error") or {}).get("code") == "unavailable":
                # the web's first write may still go to a connection of the killed server: the
                # client resends with the same request id, as the README tells clients to
                after = client.command(stop)
            assert after["accepted"] is True, after.get("error")
            result = client.result_for(after["request_id"])
            assert result["success"] is True and result["result"]["state"] == "STOPPED"
        finally:
            client.close()
        assert up.pids() == supervised, "every process reconnects: none died and was restarted"

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=15) == 0
        assert not redis_answers(redis_url)
        # the password never shows: not in hean up's output, a log, the CLI's output or a command line
        logs = [home / "logs" / name for name in os.listdir(home / "logs")] + [home / "redis" / "redis.log"]
        assert len(logs) >= len(process_names()) + 2
        for where, text in [("hean up", up.output()), ("celery inspect", inspect.stdout + inspect.stderr)] + [
            (str(log), log.read_text(errors="replace")) for log in logs
        ]:
            assert password not in text, f"the Redis password appears in {where}"
        assert "redis://:***@127.0.0.1:" in up.output()
    finally:
        up.finish()


def _supervisord_when_all_run(up: UpProcess) -> int:
    """supervisord's pid, once `up` is ready and every process RUNNING."""
    wait_for(lambda: "ready: dashboard" in up.output(), 120, "hean up to be ready")
    wait_for(lambda: set(up.pids()) == set(process_names()), 60, "every process RUNNING")
    supervisor = re.search(r"supervisor: pid=(\d+)", up.output())
    assert supervisor is not None
    return int(supervisor.group(1))


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_hean_up_leaves_no_process_running(up_env: dict[str, str], tmp_path: Path) -> None:
    """`hean up` SIGKILLed (or killed by the OOM killer) cannot stop its children in order; the
    kernel tells them (PR_SET_PDEATHSIG): supervisord stops its programs and Redis stops, instead
    of running on unsupervised and holding the ports a new `hean up` needs."""
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        left = [_supervisord_when_all_run(up), *up.pids().values(), up.redis_pid() or 0]
        assert all(psutil.pid_exists(pid) for pid in left), left
        up.process.kill()
        up.process.wait(10)

        def gone() -> bool:
            return not any(_running(pid) for pid in left)

        wait_for(gone, 60, "supervisord, its programs and Redis to stop after hean up was killed")
    finally:
        up.finish()


def test_hean_up_stops_what_a_killed_supervisord_left_running(up_env: dict[str, str], tmp_path: Path) -> None:
    """supervisord SIGKILLed (or killed by the OOM killer) cannot stop its programs: they were
    left running, orphaned, the web process still acking orders while `hean up` stopped Redis
    under it, and holding the ports. `hean up` adopts them (PR_SET_CHILD_SUBREAPER), says so and
    stops them before Redis, then exits with an error."""
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        supervisord = _supervisord_when_all_run(up)
        programs = up.pids()
        os.kill(supervisord, signal.SIGKILL)
        assert up.process.wait(30) == 2
        output = up.output()
        assert "error: supervisord exited with code -9" in output
        left = re.search(r"stopping: (\d+) processes supervisord left running \(([^)]*)\)", output)
        assert left is not None, output
        assert set(left.group(2).split()) == set(process_names())
        assert output.index("left running") < output.index("stopping: redis") < output.index("stopped")
        assert not [name for name, pid in programs.items() if _running(pid)]
        assert not _running(up.redis_pid() or 0)
        assert listen_problem("127.0.0.1", int(up_env["HEAN_PORT"])) is None  # free for the next `hean up`
    finally:
        up.finish()


def test_a_second_hean_up_on_the_same_home_is_refused(up_env: dict[str, str], tmp_path: Path) -> None:
    """Two `hean up`s on one HEAN_HOME: the second started a second Redis on the first one's
    append-only files, reported the first one's processes as its own (one supervisord socket),
    wiped its metrics and, stopping, deleted its `redis.url`. It is refused now, and the first
    one runs on untouched."""
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        wait_for(lambda: "ready: dashboard" in up.output(), 120, "hean up to be ready")
        home = Path(up_env["HEAN_HOME"])
        wait_for(lambda: list((home / "metrics").iterdir()), 30, "the processes' metrics files")
        metrics = sorted((home / "metrics").iterdir())
        redis_url = (home / "redis.url").read_text()

        def valkey_servers() -> set[int]:
            return {p.pid for p in psutil.process_iter(["name"]) if "valkey" in (p.info["name"] or "")}

        servers = valkey_servers()
        second_env = hean_up_env(home)  # other ports, the same home
        second = subprocess.run(
            [str(Path(sys.executable).parent / "hean"), "up"],
            env=second_env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        refusal = f"error: another `hean up` (pid {up.process.pid}) runs on HEAN_HOME={home.resolve()}"
        assert refusal in second.stdout
        assert "redis: private server" not in second.stdout and "supervisor:" not in second.stdout
        assert second.stdout.splitlines()[-1].startswith("error: another `hean up`")  # the last word
        assert valkey_servers() == servers
        assert (home / "redis.url").read_text() == redis_url
        assert set(metrics) <= set((home / "metrics").iterdir())
        dashboard = re.search(r"ready: dashboard (http://\S+)/#", up.output())
        assert dashboard is not None and http_ok(dashboard.group(1) + "/api/system/health")
        up.stop()
        # the lock ends with the `hean up` that held it: the next one starts
        again = UpProcess(up_env, tmp_path / "again.log")
        try:
            wait_for(lambda: "ready: dashboard" in again.output(), 120, "the next hean up to be ready")
        finally:
            again.stop()
    finally:
        up.finish()


def test_hean_up_names_a_home_it_cannot_use(up_env: dict[str, str], tmp_path: Path) -> None:
    """HEAN_HOME under a file (or on a read-only disk): one line naming it, not a traceback."""
    (tmp_path / "a-file").write_text("")
    up_env["HEAN_HOME"] = str(tmp_path / "a-file" / "hean")
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        assert up.process.wait(timeout=30) == 2
        home = tmp_path / "a-file" / "hean"
        assert up.output().splitlines() == [f"error: cannot use HEAN_HOME={home}: Not a directory"]
    finally:
        up.finish()


def test_hean_up_refuses_a_taken_port(up_env: dict[str, str], tmp_path: Path) -> None:

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


def test_hean_up_names_a_host_it_cannot_listen_on(up_env: dict[str, str], tmp_path: Path) -> None:
    """Not "in use": an address this machine does not have is a wrong HEAN_HOST."""
    up_env["HEAN_HOST"] = "203.0.113.254"  # no interface of a test machine holds it
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        assert up.process.wait(timeout=30) == 2
        assert f"web cannot listen on 203.0.113.254:{up_env['HEAN_PORT']}: " in up.output()
        assert "check HEAN_HOST" in up.output() and "in use" not in up.output()
    finally:
        up.finish()


def test_hean_up_refuses_a_redis_url_with_wrong_credentials(
    up_env: dict[str, str], tmp_path: Path, redis_server: PrivateRedis
) -> None:
    up_env["REDIS_URL"] = redis_server.url.replace(redis_server.password, "wrong-password-0123456789")
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        assert up.process.wait(timeout=30) == 2
        assert "answers but refuses its credentials" in up.output()
        assert "wrong-password-0123456789" not in up.output()
        assert "redis: private server" not in up.output()
    finally:
        up.finish()


def test_hean_up_refuses_a_redis_url_that_evicts_any_key(up_env: dict[str, str], tmp_path: Path) -> None:
    """A REDIS_URL server with a memory limit and an allkeys-* policy would drop queued orders
    and the command journal when full: refused, before anything starts. volatile-* (only keys
    that expire anyway) and no limit at all are used as they are (eviction_problem)."""
    from hean.redis_server import eviction_problem

    with PrivateRedis(tmp_path / "evicting") as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert eviction_problem(server.url) is None  # no limit: nothing is evicted
            client.config_set("maxmemory", "64mb")
            for policy in ("noeviction", "volatile-lru", "volatile-ttl"):
                client.config_set("maxmemory-policy", policy)
                assert eviction_problem(server.url) is None, policy
            client.config_set("maxmemory-policy", "allkeys-lru")
            up_env["REDIS_URL"] = server.url
            up = UpProcess(up_env, tmp_path / "up.log")
            try:
                assert up.process.wait(timeout=30) == 2
                output = up.output()
                assert f"error: REDIS_URL {server.redacted_url} evicts any key when full" in output
                assert "maxmemory-policy allkeys-lru" in output
                assert "set maxmemory-policy noeviction" in output
                assert "redis: private server" not in output and "supervisor:" not in output
                assert server.password not in output
            finally:
                up.finish()
        finally:
            client.close()


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
    up_env: dict[str, str], tmp_path: Path, redis_server: PrivateRedis
) -> None:
    up_env["REDIS_URL"] = redis_server.url  # its own password, used as given and never shown
    up = UpProcess(up_env, tmp_path / "up.log")
    try:
        wait_for(lambda: "ready: dashboard" in up.output(), 120, "hean up to be ready")
        assert f"redis: using REDIS_URL ({redis_server.redacted_url})" in up.output()
        assert "private server" not in up.output()
        up.process.send_signal(signal.SIGHUP)  # its terminal closed: it stops in order, as on SIGTERM
        assert up.process.wait(timeout=15) == 0
        assert up.output().rstrip().endswith("stopped"), up.output()[-2000:]
        home = Path(up_env["HEAN_HOME"])
        assert not (home / "redis.password").exists()  # no private server, no password of ours
        for log in [up.log_path, *(home / "logs").iterdir()]:
            assert redis_server.password not in log.read_text(errors="replace"), log
    finally:
        up.finish()
