"""Shared fixtures: one private Redis per test session (started on a free port), the shared system
that runs on it, and the clients and URLs tests reach it with.

Real parts only: this is the same `hean.redis_server.PrivateRedis` that `hean up` runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from hean.core.system.redis_state import SyncRedisStateManager
from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, free_port
from llm_server import LLMServer
from postgres_server import PostgresServer
from support import Client, ManagedProcess, http_ok, set_shared_risk_limits, wait_for

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The session's private Redis server (AOF on, a password of its own, which its `url` and so
    `redis_url` carry; data in a temporary directory)."""
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: PrivateRedis) -> str:
    return redis_server.url


#: The database `redis_client` owns on the session's server. The `system` fixture's processes
#: (web, workers, beat: broker, results, state bus) use database 0 of the same server, so
#: flushing this one cannot touch them, whatever order the test files run in.
OWN_DB = 1


@pytest.fixture(scope="session")
def own_db_url(redis_url: str) -> str:
    """The session server's URL on database OWN_DB (the one `redis_client` flushes): point every
    client of a test that uses `redis_client` here, never at `redis_url`."""
    return urlsplit(redis_url)._replace(path=f"/{OWN_DB}").geturl()


@pytest.fixture
def redis_client(own_db_url: str) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database of its own (OWN_DB, not the system's)."""
    client = redis.Redis.from_url(own_db_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sync_manager(own_db_url: str, redis_client: redis.Redis) -> Iterator[SyncRedisStateManager]:
    """A sync state-bus manager on the test's own, freshly flushed database."""
    manager = SyncRedisStateManager(own_db_url)
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMServer]:
    """The session's local LLM server (OpenAI Chat Completions + Responses, Anthropic Messages)."""
    server = LLMServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (Debian's binaries, a cluster in a temporary directory,
    a free port); a test asks it for a database of its own (`create_database`)."""
    server = PostgresServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def base_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for subprocesses: the session's Redis and a private HEAN_HOME."""
    env = dict(os.environ)
    env.pop("HEAN_API_TOKEN", None)
    env["REDIS_URL"] = redis_url
    env["HEAN_HOME"] = str(tmp_path_factory.mktemp("hean-home"))
    env["PYTHONUNBUFFERED"] = "1"
    # the processes' Prometheus series, merged by the web process's /metrics (as `hean up` does)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("metrics"))
    return env


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def api_token() -> str:
    return "test-token-" + os.urandom(8).hex()


@pytest.fixture(scope="session")
def system(base_env: dict[str, str], api_token: str, logs_dir: Path) -> Iterator[dict[str, object]]:
    """The web process, the engine + default workers and the history writer, as `hean up` runs
    them."""
    port = free_port()
    env = dict(
        base_env,
        HEAN_API_TOKEN=api_token,
        HEAN_PORT=str(port),
        # a project's own commands, loaded by the web process and every worker
        HEAN_COMMAND_MODULES="custom_commands",
        PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS_DIR), base_env.get("PYTHONPATH")])),
    )
    specs = {spec.name: spec for spec in PROCESSES}
    started = []
    try:
        for name in ("worker-engine", "worker-llm", "history", "web"):
            argv = specs[name].argv(sys.executable)
            started.append(ManagedProcess(name, argv, env, logs_dir))
        base_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(base_url + "/api/system/health"), 60, "the web process")
        system = {"url": base_url, "token": api_token, "env": env, "processes": started}
        set_shared_risk_limits(system)
        yield system
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="session")
def system_redis_url(system: dict[str, Any]) -> str:
    """The Redis URL of the shared system's processes (broker, results, state bus: database 0)."""
    return str(system["env"]["REDIS_URL"])


@pytest.fixture
def client(system: dict[str, Any]) -> Iterator[Client]:
    """A Socket.IO client of the shared system, connected with its token; closed after the test."""
    connected = Client(str(system["url"]), str(system["token"]))
    try:
        yield connected
    finally:
        connected.close()
