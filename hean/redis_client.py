"""The process's shared Redis connection pool for plain reads and writes."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from hean.config import get_settings

#: Enough for a few writer greenlets/threads; callers block (not raise) when all are busy.
POOL_SIZE = 32


def text(value: bytes | str) -> str:
    """A reply value as text: HEAN's clients do not decode replies (they carry bytes)."""
    return value.decode() if isinstance(value, bytes) else value


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


@functools.cache
def script_sha(source: str) -> str:
    """The SHA1 by which Redis knows a Lua script."""
    return hashlib.sha1(source.encode()).hexdigest()


def run_script(pool: redis.ConnectionPool, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run the Lua script `source` by its SHA (loading it first if the server lost it) on a
    pooled connection.

    For hot paths that run one script per call: redis-py's client layer (retries, argument
    checks, instrumentation) costs more CPU than the command. Errors are redis-py's own; a
    connection that failed mid-command is dropped, never reused.
    """
    sha = script_sha(source)
    conn = pool.get_connection()
    try:
        try:
            conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return conn.read_response()
        except NoScriptError:
            conn.send_command("SCRIPT", "LOAD", source)
            conn.read_response()
            conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return conn.read_response()
    except ResponseError:
        raise  # the server answered: the connection is in a clean state
    except BaseException:
        conn.disconnect()  # the pool reconnects it on next use
        raise
    finally:
        pool.release(conn)
