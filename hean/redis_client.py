"""The process's shared Redis connection pool for plain reads and writes."""

from __future__ import annotations

import functools

import redis

from hean.config import get_settings

#: Enough for a few writer greenlets/threads; callers block (not raise) when all are busy.
POOL_SIZE = 32


@functools.cache
def sync_client() -> redis.Redis:
    """One blocking pool per process (redis-py 8's plain pool raises past its limit)."""
    pool = redis.BlockingConnectionPool.from_url(
        get_settings().effective_redis_url(),
        max_connections=POOL_SIZE,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
