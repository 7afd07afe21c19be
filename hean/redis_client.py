"""The process's shared Redis connection pool for plain reads and writes, the hot-path script
call, and what "durable" means for a write HEAN acknowledges."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    WatchError,
)

from hean.config import get_settings
from hean.logs import FailureLog
from hean.process_wide import ProcessWide

if TYPE_CHECKING:
    import redis.asyncio

#: Enough for a few writer greenlets/threads; callers block (not raise) when all are busy.
POOL_SIZE = 32

log = logging.getLogger(__name__)


class NotDurable(RedisError):
    """The write happened, but was not fsynced (or replicated) as required in time."""


@dataclass(frozen=True)
class Durability:
    """What a write must reach before HEAN acknowledges it: the server's own append-only file
    fsynced (`local`) and the AOFs of `replicas` replicas, checked with WAITAOF (Valkey, Redis
    7.2+) right after the write.

    WAITAOF only tells the truth with `appendfsync always`, which the private server uses. With
    `appendfsync everysec`, Valkey 9.1.2 (the private server's binary) answers WAITAOF "fsynced"
    as soon as the write reached the file, before any fsync (the everysec thread fsyncs once a
    second; strace shows no fsync per WAITAOF): the bug redis/redis#13793 fixed in Redis (2025).
    Without the bug, WAITAOF under everysec would wait for that once-a-second fsync. So under
    everysec an ack survives a crash of Redis or of any process, not of the machine; and
    `resolve` warns when a server that must fsync is not set to `always`. WAITAOF goes out once
    the write's reply is in, not pipelined behind it (it applies to what the connection wrote).

    `server_fsyncs`: the server runs `appendfsync always`, so it answers a write, and delivers
    the pub/sub messages of its turn, only after the fsync that covers it (strace: write to the
    AOF, fdatasync, then the reply). A local WAITAOF then adds one round trip and nothing else,
    and is not sent (25,000 orders/s in 100-order commands: p50 2.5-2.7 ms and p99 6-8 ms lower).
    Processes ask again every RESOLVE_EVERY_S (`durability`, the web's writer), so a server
    switched to everysec at run time gets its WAITAOFs back within seconds.
    """

    local: bool
    replicas: int = 0
    timeout_ms: int = 1000
    server_fsyncs: bool = False

    @property
    def required(self) -> bool:
        """Whether a WAITAOF must follow a durable write."""
        return (self.local and not self.server_fsyncs) or self.replicas > 0

    def command(self) -> tuple[Any, ...]:
        return ("WAITAOF", int(self.local), self.replicas, self.timeout_ms)

    def check(self, reply: Sequence[Any]) -> None:
        local, replicas = (int(n) for n in reply)
        if local < int(self.local) or replicas < self.replicas:
            raise NotDurable(
                f"not durable within {self.timeout_ms} ms: local AOF fsynced {local}/{int(self.local)}, "
                f"replicas {replicas}/{self.replicas}"
            )


NOT_DURABLE = Durability(local=False)


@dataclass(frozen=True)
class DurabilityRule:
    """HEAN_ACK_FSYNC and HEAN_ACK_REPLICAS: `fsync` "on" (the local AOF fsynced), "off", or
    "auto" (on when the server keeps an append-only file, as the private one does)."""

    fsync: str = "auto"
    replicas: int = 0

    def refresh(self, client: redis.Redis, known: Durability | None) -> Durability:
        """`resolve`, asked again; while Redis cannot answer, what was `known` (the write that
        follows reports the outage itself). The first time, Redis's errors are raised."""
        try:
            return self.resolve(client)
        except RedisError:
            if known is None:
                raise
            return known

    def resolve(self, client: redis.Redis) -> Durability:
        """The durability acks wait for on the server `client` talks to."""
        aof = self.fsync != "off" and str(client.info("persistence").get("aof_enabled", 0)) == "1"
        local = self.fsync == "on" or aof
        if self.fsync == "auto" and not local and "no aof" not in _warned:
            _warned.add("no aof")  # once per process: this is asked every few seconds
            log.warning(
                "event=acks_not_fsynced reason=server_has_no_aof "
                "detail='acks confirm the write, not an fsync: enable appendonly or set HEAN_ACK_FSYNC'"
            )
        policy = server_appendfsync(client) if local else None
        if local and policy not in (None, "always") and policy not in _warned:
            _warned.add(policy)  # once per process and setting: this is asked every few seconds
            log.warning(
                "event=acks_fsync_not_guaranteed appendfsync=%s detail='WAITAOF under appendfsync %s "
                "can answer before the fsync (Valkey 9.1, Redis 7.4 before redis/redis#13793): acks "
                "survive a crash of Redis, not of the machine; set appendfsync always for that'",
                policy,
                policy,
            )
        return Durability(local=local, replicas=self.replicas, server_fsyncs=aof and policy == "always")


#: What `DurabilityRule.resolve` warned about in this process (appendfsync settings, "no aof").
_warned: set[str] = set()
#: How often a process asks the server again what its durable writes wait for.
RESOLVE_EVERY_S = 5.0


class DurabilityWatch:
    """What `rule` makes durable writes wait for on `client`'s server, asked again every
    RESOLVE_EVERY_S (a server switched to everysec at run time gets its WAITAOFs back within
    seconds); while Redis cannot answer, what was known. The first `get()` asks Redis, and
    raises its errors. Not locked: callers take turns (one writer each)."""

    def __init__(self, rule: DurabilityRule, client: redis.Redis) -> None:
        self.rule, self.client = rule, client
        self._known: Durability | None = None
        self._asked_at = 0.0

    def get(self) -> Durability:
        if self._known is None or time.monotonic() - self._asked_at >= RESOLVE_EVERY_S:
            self._known = self.rule.refresh(self.client, self._known)
            self._asked_at = time.monotonic()
        return self._known


def server_appendfsync(client: redis.Redis) -> str | None:
    """The server's appendfsync, or None when it will not say (CONFIG refused, as on many
    managed services)."""
    try:
        return text(client.config_get("appendfsync").get("appendfsync") or b"") or None
    except RedisError:
        return None


#: Redis errors that pass once the server is back (a restart, a failover) or has memory again:
#: a write refused for one of these is worth trying again with the same data.
TRANSIENT_ERRORS: tuple[type[RedisError], ...] = (
    redis.exceptions.ConnectionError,  # and BusyLoadingError: a restarted server loading its AOF
    redis.exceptions.TimeoutError,
    OutOfMemoryError,
    ReadOnlyError,
    ExecAbortError,  # a MULTI whose queued commands were refused (e.g. out of memory)
    NotDurable,
)


def is_out_of_memory(exc: RedisError) -> bool:
    """Redis refused the write for want of memory (maxmemory reached)."""
    return isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM")


def unavailable_reason(exc: RedisError) -> str:
    """Why Redis refused a write, in words for a client's `unavailable` error."""
    if is_out_of_memory(exc):
        return "Redis is out of memory (maxmemory reached)"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "Redis is unreachable"
    if isinstance(exc, ReadOnlyError):
        return "Redis is a read-only replica"
    return f"Redis refused the write ({type(exc).__name__})"


@functools.cache
def _process_watch() -> DurabilityWatch:
    settings = get_settings()
    return DurabilityWatch(DurabilityRule(settings.ack_fsync, settings.ack_replicas), sync_client())


def durability() -> Durability:
    """What this process's durable writes wait for (HEAN_ACK_FSYNC, HEAN_ACK_REPLICAS), asked
    of the server at most every RESOLVE_EVERY_S."""
    return _process_watch().get()


_commit_clients = threading.local()


def commit_client() -> redis.Redis:
    """This thread's client for transactions that must reach the disk before anyone hears of
    them: a pool of one connection, so the WAITAOF that follows a MULTI/EXEC runs on the same
    connection (WAITAOF waits for the writes of its own connection only)."""
    client: redis.Redis | None = getattr(_commit_clients, "client", None)
    if client is None:
        pool = redis.ConnectionPool.from_url(
            get_settings().effective_redis_url(),
            max_connections=1,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        client = _commit_clients.client = redis.Redis(connection_pool=pool)
    return client


def wait_durable(client: redis.Redis, durable: Durability) -> None:
    """WAITAOF for what `client` (a `commit_client`) wrote last; NotDurable if it did not get
    as far as `durable` asks in time."""
    if not durable.required:
        return
    try:
        reply = client.execute_command(*durable.command())
    except ResponseError as exc:  # e.g. no AOF on the server: the writes did happen
        raise NotDurable(f"WAITAOF failed: {exc}") from exc
    durable.check(reply)


def next_stream_id(entry_id: str) -> str:
    """The stream id right after `entry_id` ("ms-seq"): `XTRIM MINID` from it drops the entry
    and everything before."""
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def entry_time(entry_id: bytes | str) -> float:
    """When a stream entry was added: its id's milliseconds, in epoch seconds."""
    return int(text(entry_id).split("-", 1)[0]) / 1000.0


def oldest_entry_age_s(xrange_reply: Sequence[Any], now: float) -> float:
    """How long ago the first entry of an `XRANGE key - + COUNT 1` reply was added (0 for an
    empty stream): for the history stream, how far the database lags behind."""
    return max(0.0, now - entry_time(xrange_reply[0][0])) if xrange_reply else 0.0


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


class ConnectionSource(Protocol):
    """Where `run_script` gets its connection and gives it back: a redis-py pool, or one
    connection of a caller's own (`OwnConnection`)."""

    def get_connection(self) -> Any: ...

    def release(self, connection: Any) -> None: ...


class OwnConnection:
    """One connection made by `pool` (with its settings, and dropped with it), lent to one caller
    at a time without the pool's checks.

    redis-py's pools ask each connection they hand out whether its socket holds unread data;
    under eventlet that is a green select, a trip through the hub, and with the blocking pool's
    queue a checkout cost ~60 us of the web process's time, measured (benchmarks/bench_intake.py),
    more than a PING's round trip on the connection itself (~30 us). `run_script` leaves nothing
    unread on a connection it gives back (it drops one that failed mid-command, and the next
    command reconnects it), so the web's command writer, which runs every journal script, owns
    one.
    """

    #: A connection idle this long is checked before use, as the pool checks every one: a
    #: Redis restarted meanwhile closed it, and the first command on it would fail. Busy, the
    #: connection is never idle this long and never pays for the check.
    CHECK_IDLE_S = 0.25

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._connection = pool.make_connection()
        self._lock = threading.Lock()
        self._used_at = time.monotonic()

    def get_connection(self) -> Any:
        self._lock.acquire()
        connection = self._connection
        if time.monotonic() - self._used_at >= self.CHECK_IDLE_S:
            try:
                stale = getattr(connection, "_sock", None) is not None and connection.can_read()
            except (RedisConnectionError, TimeoutError, OSError):
                stale = True
            if stale:  # closed by the server (or unread data): connect afresh on the next send
                connection.disconnect()
        return connection

    def release(self, connection: Any) -> None:
        self._used_at = time.monotonic()
        self._lock.release()


_hot: ProcessWide[OwnConnection] = ProcessWide(lambda: OwnConnection(sync_client().connection_pool))
os.register_at_fork(after_in_child=lambda: _hot.set(None))  # the parent's socket is not the child's


def hot_connection() -> OwnConnection:
    """This process's own connection (OwnConnection, on `sync_client()`'s pool) for a worker's
    take and commit, each once per batch: the pool's checkout and return (its fork check, a poll
    of the socket for unread data, the blocking pool's queue and lock) were a tenth of the engine
    worker's CPU at 1,000 single orders/s. Threads share it, one at a time; a forked child makes
    its own."""
    return _hot.get()


@functools.cache
def script_sha(source: str) -> str:
    """The SHA1 by which Redis knows a Lua script."""
    return hashlib.sha1(source.encode()).hexdigest()


#: The argument types hiredis writes exactly as redis-py's Encoder does (bytes as they are, str
#: as UTF-8, int and float as their repr; tests/test_redis_client.py holds them equal).
_PLAIN_ARGS: frozenset[type] = frozenset((bytes, str, int, float))


def pack_commands(connection: Any, commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """`commands` in the Redis protocol, the bytes `connection.pack_commands(commands)` writes, in
    one buffer. A command whose arguments are all plain is packed by hiredis at once;
    redis-py's packer first runs its Encoder over each argument in Python: the engine worker's
    commit of five single orders took 54 us to pack that way, 13 this way
    (benchmarks/bench_pack.py). Any other command (other types, a bool, a name of several
    words) goes through redis-py's packer, which also raises its errors."""
    parts: list[bytes] = []
    for args in commands:
        name = args[0]
        one_word = (type(name) is str and " " not in name) or (type(name) is bytes and b" " not in name)
        if one_word and all(type(arg) in _PLAIN_ARGS for arg in args):
            parts.append(hiredis.pack_command(tuple(args)))
        else:
            parts += connection.pack_commands([args])
    return [b"".join(parts)]


#: Queued first in every transaction `execute_transaction` runs: a SET of a key nobody writes,
#: with XX, so it writes nothing (nor anything to the AOF). It is there for its DENYOOM flag. A
#: full Redis (maxmemory, noeviction) refuses to queue it and then discards the whole
#: transaction. Without it, a transaction of commands Redis does not count as adding memory
#: (scripts, LREM, PUBLISH) was queued and run one by one: the scripts refused for want of memory
#: and the rest run. An engine worker's commit of a batch that wrote no log entry then
#: acknowledged its message and published its results, whose journal writes had been refused
#: (the batch was held and tried again, without the command whose message was gone).
OOM_GUARD: Final = ("SET", "hean:oom-guard", "", "XX")


class TransactionFence(Protocol):
    """What `execute_transaction` asks of a fence (workers.shard_owner.Fence): `open` on the
    connection before the transaction, the commands of `TAIL` sent after its EXEC, their replies
    to `close` (with whether the EXEC ran), and `broken` when the connection failed."""

    @property
    def TAIL(self) -> Sequence[Sequence[Any]]: ...  # a constant of each fence

    def open(self, conn: Any) -> None: ...

    def close(self, conn: Any, replies: list[Any], ran: bool) -> None: ...

    def broken(self) -> None: ...

    @property
    def lost_after_commit(self) -> str | None: ...  # set by `close` when a commit ran and then lost

    def settle(self) -> None: ...  # raises once the caller has sent what such a commit owes


def execute_transaction(
    source: ConnectionSource, pipe: Any, fence: TransactionFence | None = None
) -> list[Any]:
    """Run the commands queued on `pipe` (a `pipeline(transaction=True)`, never executed) as one
    MULTI/EXEC on a connection of `source` (a pool, or an OwnConnection), and return EXEC's
    replies as Redis gave them (bytes, ints, lists: no response callbacks), for hot paths whose
    replies need none: the engine worker's commit of five single orders costs its client 0.74x the CPU of
    redis-py's `execute()` (benchmarks/bench_pack.py). `execute()` also retried the whole
    transaction after a connection error, when it may already have run; here the error is
    raised (the callers retry with their own idempotency) and the connection dropped. A command
    Redis refused, queued or run, raises its error as `execute()` does (the first one), after
    the transaction was read to its end. A full Redis runs none of it (OOM_GUARD): its
    OutOfMemoryError is raised. `pipe` is reset.

    With `fence`, the transaction runs only while the fence holds (its `open` before, its TAIL's
    replies to `close` after, which raise if it no longer does and the EXEC ran nothing)."""
    commands = [args for args, _options in pipe.command_stack]
    pipe.reset()
    tail = fence.TAIL if fence is not None else ()
    conn = source.get_connection()
    replies: list[Any] = []  # MULTI's, the guard's and each command's (QUEUED), EXEC's; the tail's
    try:
        if fence is not None:
            fence.open(conn)
        conn.send_packed_command(pack_commands(conn, [("MULTI",), OOM_GUARD, *commands, ("EXEC",), *tail]))
        for _ in range(len(commands) + 3 + len(tail)):  # all, refusals too: the connection stays clean
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        if fence is not None:
            fence.close(conn, replies[len(replies) - len(tail) :], isinstance(replies[-len(tail) - 1], list))
            del replies[len(replies) - len(tail) :]
    except BaseException:
        conn.disconnect()  # replies may still be on their way: the next use reconnects it
        if fence is not None:
            fence.broken()
        raise
    finally:
        source.release(conn)
    multi, guard, *queued, executed = replies
    if isinstance(multi, ResponseError):
        raise multi
    if isinstance(guard, ResponseError):  # out of memory: the transaction was discarded
        raise guard
    refused = next(((i, exc) for i, exc in enumerate(queued) if isinstance(exc, ResponseError)), None)
    if isinstance(executed, ResponseError):  # EXECABORT: a command was refused as it was queued
        raise executed if refused is None else _annotated(*refused, commands)
    if executed is None:
        raise WatchError("Watched variable changed.")
    executed = executed[1:]  # the guard's reply (nil: nothing set)
    for i, reply in enumerate(executed):
        if isinstance(reply, ResponseError):
            raise _annotated(i, reply, commands)
    return list(executed)


def _annotated(i: int, exc: ResponseError, commands: Sequence[Sequence[Any]]) -> ResponseError:
    """`exc` with the command that caused it named, as redis-py's pipelines name it."""
    command = " ".join(str(arg) for arg in commands[i])[:100]
    exc.args = (f"Command # {i + 1} ({command}) of pipeline caused error: {exc.args[0]}", *exc.args[1:])
    return exc


def _script_exchange(conn: Any, script: tuple[Any, ...], durable: Durability) -> Any:
    """The script's reply; then, if it ran and `durable` asks for it, WAITAOF (see Durability)."""
    conn.send_packed_command(pack_commands(conn, [script]))
    reply = conn.read_response()
    if durable.required:
        conn.send_command(*durable.command())
        try:
            synced = conn.read_response()
        except ResponseError as exc:  # e.g. no AOF on the server: the script did run
            raise NotDurable(f"WAITAOF failed: {exc}") from exc
        durable.check(synced)
    return reply


def _script_load(conn: Any, source: str) -> None:
    """SCRIPT LOAD `source` on `conn`: the server's cache then knows it by its SHA."""
    conn.send_command("SCRIPT", "LOAD", source)
    conn.read_response()


def load_scripts(pool: ConnectionSource, sources: Sequence[str]) -> None:
    """Put `sources` into the server's script cache on a connection of `pool` (made now if it
    was not yet), so that their first `run_script` finds them: no NOSCRIPT round trip, no
    connection to make. Raises redis-py's errors; a connection that failed is dropped."""
    conn = pool.get_connection()
    try:
        for source in sources:
            _script_load(conn, source)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def run_script(
    pool: ConnectionSource,
    source: str,
    keys: Sequence[Any],
    args: Sequence[Any],
    durable: Durability = NOT_DURABLE,
    retry_stale: bool = False,
) -> Any:
    """Run the Lua script `source` by its SHA (loading it first if the server lost it) on a
    pooled connection; with `durable`, WAITAOF follows it, and NotDurable is raised, after the
    script ran, if its writes did not get that far in time.

    With `retry_stale`, a connection error on a connection made before this call (a Redis
    restarted meanwhile closed it, sooner than `OwnConnection.CHECK_IDLE_S` looks) is tried once
    more on a new connection. Only for scripts that may run twice: the script may have run
    before the connection failed (the command journal's scripts keep to their request ids).

    For hot paths that run one script per call: redis-py's client layer (retries, argument
    checks, instrumentation) costs more CPU than the command. Errors are redis-py's own; a
    connection that failed mid-command is dropped, never reused.
    """
    sha = script_sha(source)
    script = ("EVALSHA", sha, len(keys), *keys, *args)
    retry = retry_stale
    while True:
        conn = pool.get_connection()
        reused = getattr(conn, "_sock", None) is not None
        try:
            try:
                return _script_exchange(conn, script, durable)
            except NoScriptError:
                _script_load(conn, source)
                return _script_exchange(conn, script, durable)
        except (ResponseError, NotDurable):
            raise  # the server answered: the connection is in a clean state
        except RedisConnectionError as exc:
            conn.disconnect()  # the pool reconnects it on next use
            if not (retry and reused):
                raise
            retry = False
            log.warning("event=script_connection_stale action=retry error=%s", exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)


async def run_script_async(
    pool: redis.asyncio.ConnectionPool, source: str, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """:func:`run_script` over ``redis.asyncio``: the same steps, result and errors (the state
    bus's asyncio face calls its scripts with it). It has no `durable` yet: no asyncio caller
    acknowledges writes."""
    sha = script_sha(source)
    conn = await pool.get_connection()
    try:
        try:
            await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return await conn.read_response()
        except NoScriptError:
            await conn.send_command("SCRIPT", "LOAD", source)
            await conn.read_response()
            await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return await conn.read_response()
    except ResponseError:
        raise  # the server answered: the connection is in a clean state
    except BaseException:
        await conn.disconnect(nowait=True)  # the pool reconnects it on next use
        raise
    finally:
        await pool.release(conn)


class SendAhead:
    """Commands sent once a period on a connection of their own, whose replies are read just
    before the next send instead of waited for: by then they have long arrived, so the sender
    wakes up once a period (for its timer, or its next message) instead of twice (on a small VM
    each wake-up costs a few hundred microseconds of CPU; beat's pulse, the web heartbeat and
    the engine's answer to the pulse's ping go ten a second).

    For commands that the next period's replace (a pulse, a heartbeat, a ping's answer): a
    command written into a connection that had just died (a Redis restart) is lost, and only
    the next call finds out.

    `send(*args)` (one command) and `send_all(commands)` (several, in one write) first read
    the previous call's replies, then send; they return those replies (one reply, or a list
    after `send_all`; None when nothing was owed). An error reply (ResponseError) is raised
    after this call's commands went. A failed connection is dropped and this call's commands
    go once more on a new one (the replies owed on the old one are lost: None is returned);
    what that second try raises is raised. `close()` reads any reply owed and gives the
    connection back."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None
        self._owed = 0
        self._owed_list = False
        # ten calls a second while Redis is away: one line, then one every 10 s, then one when
        # a call goes through again
        self._reconnects = FailureLog(log)

    def send(self, *args: Any) -> Any:
        return self._send([args], as_list=False)

    def send_all(self, commands: Sequence[Sequence[Any]]) -> Any:
        return self._send(commands, as_list=True)

    def _send(self, commands: Sequence[Sequence[Any]], as_list: bool) -> Any:
        try:
            reply = self._send_once(commands, as_list)
        except (RedisConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self._reconnects.failed("event=send_ahead_reconnect error=%s", exc, level=logging.WARNING)
            reply = self._send_once(commands, as_list)  # on a new connection: nothing owed
        self._reconnects.recovered("event=send_ahead_reconnected")
        return reply

    def _send_once(self, commands: Sequence[Sequence[Any]], as_list: bool) -> Any:
        if self._connection is None:
            self._connection = self._pool.get_connection()
        connection = self._connection
        replies: list[Any] = []
        refused: ResponseError | None = None
        owed, owed_list = self._owed, self._owed_list
        try:
            self._owed = 0
            for _ in range(owed):
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:  # the connection is fine: this call still goes
                    refused = refused or exc
                    replies.append(exc)
            connection.send_packed_command(pack_commands(connection, commands))
            self._owed, self._owed_list = len(commands), as_list
        except BaseException:
            self._drop()
            raise
        if refused is not None:
            raise refused
        if not owed:
            return None
        return replies if owed_list else replies[0]

    def close(self) -> None:
        """Read the replies still owed (if any) and give the connection back."""
        if self._connection is None:
            return
        try:
            for _ in range(self._owed):
                try:
                    self._connection.read_response()
                except ResponseError as exc:
                    log.warning("event=send_ahead_refused error=%s", exc)
            self._owed = 0
        except (RedisError, OSError) as exc:
            log.warning("event=send_ahead_reply_lost error=%s", exc)
            self._drop()
            return
        self._pool.release(self._connection)
        self._connection = None

    def _drop(self) -> None:
        connection, self._connection, self._owed = self._connection, None, 0
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)
