"""Shared fixtures: one private Redis per test session, started on a free port.

Real parts only: this is the same `hean.redis_server.PrivateRedis` that `hean up` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hean.redis_server import PrivateRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The session's private Redis server (AOF on, data in a temporary directory)."""
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: PrivateRedis) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


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
    return env
