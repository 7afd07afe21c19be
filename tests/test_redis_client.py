"""hean.redis_client.run_script: the hot-path script call, against a real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from hean.redis_client import run_script

SOURCE = "if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end " \
    "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def pool(own_db_url: str, redis_client: redis.Redis) -> redis.BlockingConnectionPool:
    p = redis.BlockingConnectionPool.from_url(own_db_url, max_connections=2, timeout=2)
    yield p
    p.disconnect()


def test_it_loads_the_script_when_the_server_lost_it(
    pool: redis.BlockingConnectionPool, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()
    assert run_script(pool, SOURCE, ["n"], [2]) == 2
    assert run_script(pool, SOURCE, ["n"], [3]) == 5  # loaded once, then EVALSHA


def test_a_script_error_is_raised_and_the_connection_stays_usable(pool: redis.BlockingConnectionPool) -> None:
    for _ in range(5):  # more than the pool holds: every connection went back to it
        with pytest.raises(redis.ResponseError, match="asked to fail"):
            run_script(pool, SOURCE, ["n"], ["fail"])
    assert run_script(pool, SOURCE, ["n"], [1]) == 1


SLOW = "local n = 0 for i = 1, 20000000 do n = n + i end return 'slow'"  # ~0.1-0.4 s of Lua


def test_a_timed_out_connection_is_never_reused(own_db_url: str, redis_client: redis.Redis) -> None:
    """Its late reply must not be read as the answer to the next call."""
    pool = redis.BlockingConnectionPool.from_url(own_db_url, max_connections=1, timeout=2, socket_timeout=0.1)
    try:
        with pytest.raises(redis.TimeoutError):
            run_script(pool, SLOW, ["n"], [])
        time.sleep(0.5)  # the server finishes the script and sends its reply to the old socket
        assert run_script(pool, SOURCE, ["n"], [7]) == 7  # not 'slow'
    finally:
        pool.disconnect()
