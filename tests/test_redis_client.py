"""hean.redis_client.run_script (the hot-path script call, durable or not) and its asyncio twin
run_script_async, against a real Redis. Both state-bus faces call their scripts through these,
so the tests of what they share run for both."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from hean.redis_client import (
    Durability,
    DurabilityRule,
    DurabilityWatch,
    NotDurable,
    OwnConnection,
    SendAhead,
    execute_transaction,
    pack_commands,
    run_script,
    run_script_async,
)
from hean.redis_server import PrivateRedis
from support import kill_own_connection, wait_for

SOURCE = (
    "if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end "
    "return redis.call('INCRBY', KEYS[1], ARGV[1])"
)


@pytest.fixture
def pool(own_db_url: str, redis_client: redis.Redis) -> redis.BlockingConnectionPool:
    p = redis.BlockingConnectionPool.from_url(own_db_url, max_connections=2, timeout=2)
    yield p
    p.disconnect()


class Face:
    """One face's script call on its own pool: `run_script` (on the pool, or on one connection of
    its own: "own"), or `run_script_async` on one loop."""

    def __init__(self, face: str, url: str, **pool_options: Any) -> None:
        self.face = face
        if face in ("sync", "own"):
            self.pool: Any = redis.BlockingConnectionPool.from_url(url, **pool_options)
            self.source: Any = OwnConnection(self.pool) if face == "own" else self.pool
        else:
            self.runner = asyncio.Runner()
            self.pool = redis.asyncio.BlockingConnectionPool.from_url(url, **pool_options)

    def run(self, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self.face in ("sync", "own"):
            return run_script(self.source, source, keys, args)
        return self.runner.run(run_script_async(self.pool, source, keys, args))

    def close(self) -> None:
        if self.face in ("sync", "own"):
            self.pool.disconnect()  # the own connection too: the pool made it
        else:
            self.runner.run(self.pool.disconnect())
            self.runner.close()


@pytest.fixture(params=["sync", "own", "async"])
def face(request: pytest.FixtureRequest, own_db_url: str, redis_client: redis.Redis) -> Iterator[Face]:
    f = Face(request.param, own_db_url, max_connections=2, timeout=2)
    yield f
    f.close()


def test_it_loads_the_script_when_the_server_lost_it(face: Face, redis_client: redis.Redis) -> None:
    redis_client.script_flush()
    assert face.run(SOURCE, ["n"], [2]) == 2
    assert face.run(SOURCE, ["n"], [3]) == 5  # loaded once, then EVALSHA


def test_a_script_error_is_raised_and_the_connection_stays_usable(face: Face) -> None:
    for _ in range(5):  # more than the pool holds: every connection went back to it
        with pytest.raises(redis.ResponseError, match="asked to fail"):
            face.run(SOURCE, ["n"], ["fail"])
    assert face.run(SOURCE, ["n"], [1]) == 1


SLOW = "local n = 0 for i = 1, 100000000 do n = n + i end return 'slow'"  # ~0.5-2 s of Lua: well past 0.1 s


@pytest.mark.parametrize("kind", ["sync", "own", "async"])
def test_a_timed_out_connection_is_never_reused(
    own_db_url: str, redis_client: redis.Redis, kind: str
) -> None:
    """Its late reply must not be read as the answer to the next call."""
    face = Face(kind, own_db_url, max_connections=1, timeout=2, socket_timeout=0.1)
    try:
        with pytest.raises(redis.TimeoutError):
            face.run(SLOW, ["n"], [])
        redis_client.ping()  # answered once the server has finished the script...
        time.sleep(0.2)  # ...and sent its reply to the old socket
        assert face.run(SOURCE, ["n"], [7]) == 7  # not 'slow'
    finally:
        face.close()


# -- durable writes (WAITAOF right behind the script) ------------------------------------------


def test_a_durable_script_waits_for_the_fsync_in_the_same_call(
    pool: redis.BlockingConnectionPool, redis_client: redis.Redis
) -> None:
    # the AOF is on, and the private server fsyncs each write before answering it
    assert DurabilityRule("auto").resolve(redis_client) == Durability(local=True, server_fsyncs=True)
    redis_client.script_flush()  # the NOSCRIPT path reads the WAITAOF reply too
    assert run_script(pool, SOURCE, ["n"], [2], Durability(local=True)) == 2
    assert run_script(pool, SOURCE, ["n"], [3], Durability(local=True)) == 5
    with pytest.raises(redis.ResponseError, match="asked to fail"):
        run_script(pool, SOURCE, ["n"], ["fail"], Durability(local=True))
    assert run_script(pool, SOURCE, ["n"], [1]) == 6  # every reply was read: the connection is clean


def test_a_write_that_misses_its_durability_raises_after_it_happened(
    pool: redis.BlockingConnectionPool, redis_client: redis.Redis
) -> None:
    # no replica exists: the wait times out, the script has run
    with pytest.raises(NotDurable, match="replicas 0/1"):
        run_script(pool, SOURCE, ["n"], [4], Durability(local=True, replicas=1, timeout_ms=50))
    assert int(redis_client.get("n") or 0) == 4
    assert run_script(pool, SOURCE, ["n"], [1]) == 5


def test_without_an_aof_auto_acks_do_not_wait_and_on_fails_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hean.redis_client._warned", set())
    server = PrivateRedis(tmp_path)
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("appendonly", "no")
        assert DurabilityRule("auto").resolve(client) == Durability(local=False)
        assert "acks_not_fsynced" in caplog.text
        assert DurabilityRule("off", replicas=2).resolve(client) == Durability(local=False, replicas=2)
        with pytest.raises(NotDurable, match="WAITAOF failed"):
            run_script(client.connection_pool, SOURCE, ["n"], [9], DurabilityRule("on").resolve(client))
        assert client.get("n") == b"9"
    finally:
        client.close()
        server.stop()


def test_a_command_not_durable_in_time_is_refused_as_unavailable_yet_queued(
    own_db_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hean.command_journal import CommandJournal
    from hean.topology import HISTORY_STREAM_KEY
    from web.intake import CommandIntake
    from workers.app import app

    journal = CommandJournal(redis.Redis.from_url(own_db_url))
    intake = CommandIntake(app, journal, DurabilityRule("on", replicas=1))
    monkeypatch.setattr("hean.redis_client.Durability.timeout_ms", 50)  # no replica: do not wait long
    outcome = intake.accept({"command": "list_commands", "request_id": "durable-1"}, reply_to=None)
    assert outcome.http_status == 503
    assert outcome.ack["accepted"] is False and outcome.ack["error"]["code"] == "unavailable"
    assert "resend the same request_id" in outcome.ack["error"]["message"]
    assert journal.state("durable-1") == "reserved"  # it may still run: reserved, queued and recorded
    assert b'"request_id":"durable-1"' in redis_client.xrange(HISTORY_STREAM_KEY)[0][1][b"c"]
    assert redis_client.llen("default") == 1


def test_an_own_connection_is_lent_to_one_caller_at_a_time(
    pool: redis.BlockingConnectionPool,
) -> None:
    own = OwnConnection(pool)
    first = own.get_connection()
    taken = threading.Event()

    def second() -> None:
        own.get_connection()
        taken.set()
        own.release(first)

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not taken.wait(0.2)  # waits for the first caller to give it back
    own.release(first)
    assert taken.wait(5)
    waiter.join(5)
    assert run_script(own, SOURCE, ["n"], [4]) == 4


def test_an_own_connection_closed_by_the_server_while_idle_is_made_afresh(
    pool: redis.BlockingConnectionPool, redis_client: redis.Redis
) -> None:
    """A Redis restarted (or a CLIENT KILL) closes the connection the web's command writer owns;
    the first script after an idle spell must not fail on it (hean up's Redis-restart test)."""
    own = OwnConnection(pool)
    assert run_script(own, SOURCE, ["n"], [1]) == 1
    kill_own_connection(own, redis_client)
    time.sleep(OwnConnection.CHECK_IDLE_S + 0.05)
    assert run_script(own, SOURCE, ["n"], [2]) == 3


def test_a_script_that_may_run_twice_is_tried_again_on_a_connection_closed_just_after_use(
    pool: redis.BlockingConnectionPool, redis_client: redis.Redis
) -> None:
    """Within CHECK_IDLE_S of its last use, a closed own connection is not checked: the first
    script on it fails, unless the caller says it may run twice (the web's journal scripts),
    then it runs once more on a new connection. Other errors are not retried."""
    own = OwnConnection(pool)
    assert run_script(own, SOURCE, ["n"], [1]) == 1
    kill_own_connection(own, redis_client)
    with pytest.raises(redis.ConnectionError):
        run_script(own, SOURCE, ["n"], [1])
    assert run_script(own, SOURCE, ["n"], [1]) == 2  # the failed connection was dropped, made anew
    kill_own_connection(own, redis_client)
    assert run_script(own, SOURCE, ["n"], [10], retry_stale=True) == 12  # at once: no idle wait
    assert int(redis_client.get("n")) == 12  # the failed try never reached the server
    with pytest.raises(redis.ResponseError, match="asked to fail"):  # an answer: not tried again
        run_script(own, SOURCE, ["n"], ["fail"], retry_stale=True)
    assert run_script(own, SOURCE, ["n"], [1], retry_stale=True) == 13


def test_acks_warn_when_the_server_is_not_set_to_fsync_every_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under appendfsync everysec, WAITAOF can answer before the fsync (Durability's docstring):
    a server that must fsync acks but is not set to `always` is named in a warning, once, and
    its durable writes keep their WAITAOF; under `always` the server's own fsync is enough."""
    monkeypatch.setattr("hean.redis_client._warned", set())
    server = PrivateRedis(tmp_path, appendfsync="everysec")
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        slow = DurabilityRule("auto").resolve(client)
        assert slow == Durability(local=True) and slow.required
        assert "acks_fsync_not_guaranteed appendfsync=everysec" in caplog.text
        caplog.clear()
        DurabilityRule("auto").resolve(client)
        assert "acks_fsync_not_guaranteed" not in caplog.text  # asked every few seconds: said once
        client.config_set("appendfsync", "always")
        fast = DurabilityRule("on").resolve(client)
        assert fast == Durability(local=True, server_fsyncs=True) and not fast.required
        assert DurabilityRule("on", replicas=1).resolve(client).required  # replicas still need WAITAOF
        # a process asks again every RESOLVE_EVERY_S: a switch to everysec gets WAITAOF back
        watch = DurabilityWatch(DurabilityRule("on"), client)
        assert watch.get() == fast
        client.config_set("appendfsync", "everysec")
        assert watch.get() == fast  # asked just now
        monkeypatch.setattr("hean.redis_client.RESOLVE_EVERY_S", 0.0)
        assert watch.get() == slow
        client.config_set("appendfsync", "always")
        assert watch.get() == fast
        server.stop()  # Redis away: what was known holds; never known, the error is raised
        assert DurabilityRule("on").refresh(client, fast) is fast
        assert watch.get() == fast
        with pytest.raises(redis.ConnectionError):
            DurabilityRule("on").refresh(client, None)
        with pytest.raises(redis.ConnectionError):
            DurabilityWatch(DurabilityRule("on"), client).get()
    finally:
        client.close()
        server.stop()


def test_send_ahead_reads_each_reply_at_the_next_send(pool: redis.BlockingConnectionPool) -> None:
    """Each command lands; its reply comes back from the next send (or close), in order."""
    client = redis.Redis(connection_pool=pool)
    sender = SendAhead(client)
    assert sender.send("RPUSH", "ahead", "a") is None  # nothing owed before the first
    assert sender.send("RPUSH", "ahead", "b") == 1
    assert sender.send("RPUSH", "ahead", "c") == 2
    sender.close()
    assert client.lrange("ahead", 0, -1) == [b"a", b"b", b"c"]
    sender.close()  # twice is fine
    assert sender.send("LLEN", "ahead") is None  # a fresh connection owes nothing
    assert sender.send("LLEN", "ahead") == 3


def test_send_ahead_raises_a_refused_command_at_the_next_send_and_still_sends_it(
    pool: redis.BlockingConnectionPool,
) -> None:
    client = redis.Redis(connection_pool=pool)
    client.set("ahead:text", "not a list")
    sender = SendAhead(client)
    sender.send("LPUSH", "ahead:text", "x")  # WRONGTYPE, told by the next send
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        sender.send("LPUSH", "ahead:list", "y")
    assert sender.send("LPUSH", "ahead:list", "z") == 1  # the refused call's own command went
    sender.close()
    assert client.lrange("ahead:list", 0, -1) == [b"z", b"y"]


def test_send_ahead_drops_a_connection_the_server_closed_and_sends_again_on_a_new_one(
    pool: redis.BlockingConnectionPool,
) -> None:
    """A connection the server closed is dropped and the call's commands go again on a new one;
    only a command written into the dying connection before anyone could know is lost."""
    client = redis.Redis(connection_pool=pool)
    sender = SendAhead(client)
    sender.send("CLIENT", "ID")
    own_id = sender.send("INCR", "ahead:n")  # the CLIENT ID reply
    assert client.client_kill_filter(_id=own_id) == 1  # only this connection: others share the server
    time.sleep(0.1)
    for _ in range(3):  # none raises: the loss is found at a read, and that call goes again
        sender.send("INCR", "ahead:n")
    sender.close()
    # the first INCR, then the three after the kill but at most one written into the dead socket
    assert int(client.get("ahead:n") or 0) in (3, 4)
    sender.close()
    assert sender.send("GET", "ahead:n") is None  # fresh again after close


def test_send_ahead_logs_an_outage_once_then_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten calls a second while Redis is away (the pulse's sender, the web heartbeat) wrote two
    lines each, callers' included: now the sender's line comes once per 10 s, then one when a
    call goes through again."""
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
        sender = SendAhead(client)
        sender.send("SET", "ahead:k", "1")
        pid = server.pid
        assert pid is not None
        with caplog.at_level(logging.WARNING, logger="hean.redis_client"):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not server.running(), 10, "the server to die")
            with contextlib.suppress(redis.ConnectionError):  # may go into the dead socket unseen
                sender.send("SET", "ahead:k", "2")
            for _ in range(30):
                with pytest.raises(redis.ConnectionError):
                    sender.send("SET", "ahead:k", "2")
            server.restart()
            sender.send("SET", "ahead:k", "3")
            sender.send("GET", "ahead:k")
        lines = [record.getMessage() for record in caplog.records]
        assert len(lines) == 2, lines
        assert lines[0].startswith("event=send_ahead_reconnect error=") and lines[0].endswith("failures=1")
        assert re.fullmatch(r"event=send_ahead_reconnected failures=3[01]", lines[1]), lines
        assert sender.send("GET", "ahead:k") == b"3"
        sender.close()
        client.close()


def test_send_ahead_sends_several_commands_in_one_write_and_returns_their_replies(
    pool: redis.BlockingConnectionPool,
) -> None:
    client = redis.Redis(connection_pool=pool)
    client.set("ahead:word", "text")
    sender = SendAhead(client)
    assert sender.send_all([("RPUSH", "ahead:many", "a"), ("EXPIRE", "ahead:many", 60)]) is None
    assert sender.send_all([("RPUSH", "ahead:many", "b"), ("LPUSH", "ahead:word", "x")]) == [1, True]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # the second batch's error...
        sender.send("LLEN", "ahead:many")
    assert sender.send_all([("LRANGE", "ahead:many", 0, -1)]) == 2  # ...raised after LLEN went
    assert sender.send("PING") == [[b"a", b"b"]]
    sender.close()
    assert 0 < client.ttl("ahead:many") <= 60


_ARG = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(memoryview),
)
_NAME = st.sampled_from(["SET", b"RPUSH", "CLIENT ID", b"SCRIPT LOAD", "XADD"])
_COMMAND = st.tuples(_NAME, st.lists(_ARG, max_size=6)).map(lambda c: (c[0], *c[1]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_COMMAND, min_size=1, max_size=4))
def test_commands_are_packed_into_the_bytes_redis_py_writes(commands: list[tuple[Any, ...]]) -> None:
    """hiredis packs plain commands at once; every other one goes through redis-py's packer, so
    the bytes are the same and redis-py's refusals (None, bools) are raised the same."""
    conn = redis.Connection()  # packs without connecting
    try:
        expected: Any = b"".join(conn.pack_commands(commands))
    except redis.DataError as exc:
        expected = type(exc)
    try:
        got: Any = b"".join(pack_commands(conn, commands))
    except redis.DataError as exc:
        got = type(exc)
    assert got == expected


@pytest.fixture(params=["pool", "own"])
def source(request: pytest.FixtureRequest, pool: redis.BlockingConnectionPool) -> Any:
    """Where a transaction gets its connection: the pool, or one connection of its own."""
    return pool if request.param == "pool" else OwnConnection(pool)


def test_a_transaction_gives_redis_replies_as_they_came(
    pool: redis.BlockingConnectionPool, source: Any
) -> None:
    client = redis.Redis(connection_pool=pool)
    pipe = client.pipeline(transaction=True)
    pipe.rpush("tx:list", "a", "b")
    pipe.xadd("tx:stream", {"f": "v"}, id="5-1")
    pipe.execute_command("EVAL", "return {KEYS[1], {ARGV[1], 7}}", 1, "k", "x")
    pipe.set("tx:word", "text")
    assert execute_transaction(source, pipe) == [2, b"5-1", [b"k", [b"x", 7]], b"OK"]
    assert pipe.command_stack == []  # reset: ready for the next one
    assert client.lrange("tx:list", 0, -1) == [b"a", b"b"]


def test_a_transaction_raises_the_error_of_a_command_that_failed_as_execute_does(
    pool: redis.BlockingConnectionPool, source: Any
) -> None:
    """A command that fails as it runs: the others ran (Redis does not roll back), its error is
    raised naming it, and the connection serves the next call."""
    client = redis.Redis(connection_pool=pool)
    client.set("tx:text", "not a list")
    pipe = client.pipeline(transaction=True)
    pipe.rpush("tx:ran", "before")
    pipe.rpush("tx:text", "x")
    pipe.rpush("tx:ran", "after")
    with pytest.raises(redis.ResponseError, match=r"Command # 2 \(RPUSH tx:text x\).*WRONGTYPE"):
        execute_transaction(source, pipe)
    assert client.lrange("tx:ran", 0, -1) == [b"before", b"after"]
    # refused when queued (no such command): EXEC runs nothing, the refusal is raised
    pipe.rpush("tx:ran", "never")
    pipe.execute_command("NO-SUCH-COMMAND", "x")
    with pytest.raises(redis.ResponseError, match=r"Command # 2 .*unknown command"):
        execute_transaction(source, pipe)
    assert client.llen("tx:ran") == 2
    pipe.rpush("tx:ran", "again")
    assert execute_transaction(source, pipe) == [3]


def test_a_full_redis_runs_none_of_a_transaction(tmp_path: Path) -> None:
    """Redis at its maxmemory: a transaction of commands it does not count as adding memory (a
    script that writes, LREM, PUBLISH: an engine worker's commit of a batch without a log entry)
    ran in part before, the script refused and the others run, so the message was acknowledged
    and the result published but not journaled. Now none of it runs, and the out-of-memory error
    is raised (OOM_GUARD); with room again it runs whole, with its own commands' replies."""
    with PrivateRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        listener = client.pubsub()
        listener.subscribe("tx:results")

        def commit() -> Any:
            pipe = client.pipeline(transaction=True)
            pipe.lrem("tx:delivering", 1, "message")
            script = "return redis.call('HSET', KEYS[1], 'r', ARGV[1])"
            pipe.execute_command("EVAL", script, 1, "tx:cmd", "ok")
            pipe.publish("tx:results", "ok")
            return execute_transaction(client.connection_pool, pipe)

        client.rpush("tx:delivering", "message")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            commit()
        client.config_set("maxmemory", 0)
        assert client.lrange("tx:delivering", 0, -1) == [b"message"] and not client.exists("tx:cmd")
        assert listener.get_message(timeout=1.0)["type"] == "subscribe"
        assert listener.get_message(timeout=0.2) is None  # nothing published
        assert commit() == [1, 1, 1]
        assert client.hget("tx:cmd", "r") == b"ok" and client.llen("tx:delivering") == 0
        assert client.exists("hean:oom-guard") == 0  # the guard writes nothing
        listener.close()
        client.close()


@pytest.mark.parametrize("own", [False, True])
def test_a_transaction_whose_reply_timed_out_raises_and_its_connection_is_never_reused(
    own_db_url: str, redis_client: redis.Redis, own: bool
) -> None:
    """No retry (the transaction may have run before its reply was lost: the caller decides),
    and its late reply must not be read as the answer to the next one."""
    pool = redis.ConnectionPool.from_url(own_db_url, max_connections=1, socket_timeout=0.1)
    client = redis.Redis(connection_pool=pool)
    source = OwnConnection(pool) if own else pool
    try:
        pipe = client.pipeline(transaction=True)
        pipe.incr("tx:n")
        pipe.execute_command("EVAL", SLOW, 1, "tx:slow")
        with pytest.raises(redis.TimeoutError):
            execute_transaction(source, pipe)
        redis_client.ping()  # answered once the server has finished the transaction...
        time.sleep(0.2)  # ...and sent its reply to the old socket
        pipe.incr("tx:n")
        assert execute_transaction(source, pipe) == [2]  # it ran once, and this is this one's reply
    finally:
        pool.disconnect()
