"""The one engine worker: a lease on the engine shard in Redis (ENGINE_OWNER_KEY).

Commands apply in order because exactly one process consumes the engine queue, and each engine
worker holds the engine in memory. A second engine worker on the same Redis (started by hand
beside `hean up`, a scaled docker-compose service, a second `hean up` on another HEAN_HOME with
the same REDIS_URL) would take batches too, and the two engines would part: positions, risk and
the client order ids each has seen. So an engine worker takes the lease before it consumes
anything, and renews it every OWNER_RENEW_S; one that finds it held waits, saying so, and takes
over once the holder is gone:

- the holder stopped cleanly: it gave the lease back after its last snapshot;
- the holder was on this host and its process is gone (SIGKILL, the OOM killer: supervisord's
  restart takes over at once), or it was this very pid in an earlier life (a restarted
  container);
- otherwise (another host): once the holder has not renewed for OWNER_TTL_S.

A worker that finds its lease taken by another (it was frozen or cut off from Redis for longer
than OWNER_TTL_S and another took over) stops at once rather than run one more batch.

The lease is also a fence (`Fence`): the holder's id is in ENGINE_OWNER_KEY, which only a
takeover or a release changes (the TTL is on a key of its own, OWNER_ALIVE_KEY, which the renewal
sets again), and every engine commit runs on a connection that WATCHes it. A commit of a worker
that was replaced, frozen or cut off, is refused by Redis however late it arrives, and the
worker stops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

import psutil
from redis.exceptions import RedisError, ResponseError

from hean.celery_wire import holder_id
from hean.logs import FailureLog
from hean.redis_client import run_script, text
from hean.topology import ENGINE_OWNER_KEY

log = logging.getLogger(__name__)

#: How long a lease lasts without renewal: a holder on another host that died is waited for
#: this long at most.
OWNER_TTL_S: Final = 10
#: How often the owner renews it.
OWNER_RENEW_S: Final = 1.0
#: How often a waiting worker tries again, and says it waits.
WAIT_TRY_S: Final = 0.5
WAIT_SAID_EVERY_S: Final = 10.0

#: Alive while its holder renews it (ENGINE_OWNER_KEY has no TTL: a WATCH on it must fire on a
#: takeover or a release only, never on a renewal or an expiry).
OWNER_ALIVE_KEY: Final = ENGINE_OWNER_KEY + ":alive"

# Take the shard (KEYS[1] the holder, KEYS[2] its lease) for ARGV[1] with a lease of ARGV[2] s:
# when nobody holds it, the holder's lease lapsed, or the holder is ARGV[3] (known gone). A holder
# key with a TTL of its own is a lease as an earlier version kept it, alive until it expires.
# Returns {1 if taken, the holder before (false if none)}.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
local alive = holder and (redis.call('GET', KEYS[2]) == holder or redis.call('PTTL', KEYS[1]) > 0)
if (not alive) or holder == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return {1, holder}
end
return {0, holder}
"""
# Renew ARGV[1]'s lease; 0 when it no longer holds the shard (taken over, or released by one that
# took it over: its engine ran batches this one did not see).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""

#: The error a script fenced by the lease answers, having written nothing, when its last ARGV
#: names a holder that no longer holds the shard (`run_fenced`).
SHARD_LOST_ERROR: Final = "HEANSHARDLOST"


def fence_lua(key: int) -> str:
    """Lua for the top of a script fenced by the lease: KEYS[key] is the holder's key, the last
    ARGV this process's id ('' in a script that a WATCH fences instead, inside a commit)."""
    return (
        f"if ARGV[#ARGV] ~= '' and redis.call('GET', KEYS[{key}]) ~= ARGV[#ARGV] then\n"
        f"  return redis.error_reply('{SHARD_LOST_ERROR} the engine shard is held by another worker')\n"
        "end\n"
    )


def run_fenced(
    fence: Fence | None, source: Any, script: str, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """`run_script` of `script` (which begins with `fence_lua`) on a connection of `source`, with
    this process's id as its last ARGV ('' without a fence). Raises ShardLost (after
    `ShardOwner.lost`) when another holds the shard: the script wrote nothing."""
    try:
        return run_script(source, script, keys, [*args, fence.me if fence is not None else ""])
    except ResponseError as exc:
        if fence is not None and str(exc).startswith(SHARD_LOST_ERROR):
            fence.refused(str(exc))
        raise


def host_and_pid(holder: str) -> tuple[str, int] | None:
    """The host and pid a holder id names (host:pid:random, hean.celery_wire.holder_id)."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def gone(holder: str, host: str | None = None, pid: int | None = None) -> bool:
    """True when `holder` (host:pid:random) is provably not running: on this host, its process
    is gone (or a zombie), or it was this process's pid in an earlier life."""
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    named = host_and_pid(holder)
    if named is None or named[0] != host:
        return False
    holder_pid = named[1]
    if holder_pid == pid:
        return True  # not this process (its random part differs): an earlier life of its pid
    try:
        return psutil.Process(holder_pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to look at: it may be running
        return False


class ShardOwner:
    """This process's lease on the engine shard."""

    def __init__(self, client: Callable[[], Any], me: str | None = None) -> None:
        self._client = client
        self.me = me or holder_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost: Callable[[], None] = lambda: None

    def acquire(self, on_lost: Callable[[], None]) -> str | None:
        """Block until this process holds the lease, then renew it every OWNER_RENEW_S in a
        thread (`on_lost` is called there if another holder took it). Returns the holder it
        took over from, if any."""
        waiting_since = said_at = None
        refused = FailureLog(log)  # Redis away or full: one line, then one every 10 s
        while True:
            try:
                taken, before = self._take("")
                holder = text(before or b"")
                if taken:
                    reason = "lease_lapsed"
                elif gone(holder, *(host_and_pid(self.me) or (None, None))):
                    taken, reason = self._take(holder)[0], "holder_gone"
                refused.recovered("event=engine_shard_reachable")
                if taken and not before:
                    break
                if taken:
                    log.warning(
                        "event=engine_shard_taken_over holder=%s from=%s reason=%s", self.me, holder, reason
                    )
                    self._start(on_lost)
                    return holder
                now = time.monotonic()
                if holder and (said_at is None or now - said_at >= WAIT_SAID_EVERY_S):
                    waiting_since = waiting_since or now
                    log.warning(
                        "event=engine_shard_waiting holder=%s waited_s=%.0f ttl_s=%d action=wait",
                        holder,
                        now - waiting_since,
                        OWNER_TTL_S,
                    )
                    said_at = now
            except RedisError as exc:  # Redis away (or full): nothing to consume anyway
                refused.failed(
                    "event=engine_shard_unreachable error=%s", type(exc).__name__, level=logging.WARNING
                )
            time.sleep(WAIT_TRY_S)
        if waiting_since is not None:
            log.warning(
                "event=engine_shard_owned holder=%s waited_s=%.1f", self.me, time.monotonic() - waiting_since
            )
        self._start(on_lost)
        return None

    def _take(self, gone_holder: str) -> tuple[bool, bytes | None]:
        taken, before = self._client().eval(
            _ACQUIRE, 2, ENGINE_OWNER_KEY, OWNER_ALIVE_KEY, self.me, OWNER_TTL_S, gone_holder
        )
        return bool(taken), before or None

    def lost(self) -> None:
        """Another holds the shard (a fenced commit found it): stop, as the renewal does."""
        log.critical("event=engine_shard_lost holder=%s action=stop", self.me)
        self._on_lost()

    @property
    def held(self) -> bool:
        """This process took the lease (and has not given it back)."""
        return self._thread is not None and not self._stop.is_set()

    def _start(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self._thread = threading.Thread(target=self._renew, name="hean-shard-owner", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(OWNER_RENEW_S):
            try:
                held = self._client().eval(_RENEW, 2, ENGINE_OWNER_KEY, OWNER_ALIVE_KEY, self.me, OWNER_TTL_S)
            except RedisError:
                continue  # Redis away: the batches wait for it too; renewed once it is back
            if not held and not self._stop.is_set():
                self.lost()
                return

    def release(self) -> None:
        """Give the lease back (after the last snapshot), so that the next worker starts now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * OWNER_RENEW_S)
        try:
            self._client().eval(_RELEASE, 2, ENGINE_OWNER_KEY, OWNER_ALIVE_KEY, self.me)
        except RedisError as exc:  # the next worker waits for the TTL, or sees this pid gone
            log.warning("event=engine_shard_not_released error=%s", type(exc).__name__)


class ShardLost(BaseException):
    """This process no longer holds the shard (raised where `ShardOwner.lost` returns, as in
    tests; the engine worker's exits). A BaseException: no batch retry or recovery may take it
    for a failure to run again."""


class Fence:
    """Commits that Redis runs only while this process holds the shard: the connection WATCHes
    ENGINE_OWNER_KEY from a moment when its GET read this process's id, through the commit's EXEC.
    A takeover or a release meanwhile (the key's only writers) leaves the EXEC running nothing,
    however late a frozen or cut-off worker's commit arrives.

    Chained (the engine's batch commits, on a connection of their own): each commit ends with the
    WATCH and the GET for the next one (`TAIL`, in the same packet: no round trip); a connection
    not watched yet (the first, a reconnect) is watched first, one round trip. Unchained (pooled
    connections, which other code uses in between: no WATCH may stay on them): every commit is
    watched first. The caller holds the connection from `open` to `close`.

    A takeover that lands after a chained commit's EXEC and before its TAIL's GET (Redis read the
    packet in two parts) leaves a commit that ran while this process held the shard: its results
    are durable and no one else will send them. `close` then only marks the shard lost
    (`lost_after_commit`); the caller sends what the commit owes its clients and calls `settle`,
    which stops the process as any other loss does."""

    _WATCH: Final = (("WATCH", ENGINE_OWNER_KEY), ("GET", ENGINE_OWNER_KEY))

    def __init__(self, owner: ShardOwner, chained: bool = True) -> None:
        self._owner = owner
        self._chained = chained
        self.TAIL: tuple[tuple[str, str], ...] = self._WATCH if chained else ()
        self._watching: Any = None  # the socket on which the chained WATCH stands
        #: Why the shard was found lost at the end of a commit that ran (see the class), until `settle`
        self.lost_after_commit: str | None = None

    def open(self, conn: Any) -> None:
        """Before a commit on `conn` (a redis-py connection): the WATCH stands on it, set while
        this process held the shard. Raises ShardLost (after `ShardOwner.lost`) otherwise."""
        self.settle()
        sock = getattr(conn, "_sock", None)
        if self._chained and sock is not None and sock is self._watching:
            return
        self._watching = None
        conn.send_packed_command(conn.pack_commands(self._WATCH))
        self._check(conn, [conn.read_response(), conn.read_response()])

    def close(self, conn: Any, replies: list[Any], ran: bool) -> None:
        """After a commit on `conn`: `replies` are its TAIL's, `ran` whether its EXEC ran. If
        another holds the shard: raises ShardLost (after `ShardOwner.lost`) when the EXEC ran
        nothing; marks it for `settle` when it ran (the class)."""
        if not self._chained:
            return
        holder = self._holder(replies)
        if holder is None:
            self._watching = getattr(conn, "_sock", None)
        elif ran:
            self._watching = None
            self.lost_after_commit = f"the engine shard is held by {holder} (after a commit that ran)"
            log.critical(
                "event=engine_shard_lost_after_commit holder=%s action=send_results_then_stop", self.me
            )
        else:
            self.refused(f"the engine shard is held by {holder}")

    def settle(self) -> None:
        """After a commit and what it owes its clients: raises ShardLost (after
        `ShardOwner.lost`) if its `close` found the shard lost."""
        if self.lost_after_commit is not None:
            self.refused(self.lost_after_commit)

    @property
    def me(self) -> str:
        """This process's holder id, which a script fenced by the lease is given (`run_fenced`)."""
        return self._owner.me

    def refused(self, why: str) -> NoReturn:
        """Redis refused a write of this process: another holds the shard. Raises ShardLost
        (after `ShardOwner.lost`)."""
        self._watching = None
        self._owner.lost()
        raise ShardLost(why)

    def _holder(self, replies: list[Any]) -> str | None:
        """Who holds the shard by the replies of WATCH and GET: None when this process does."""
        holder = replies[1]
        if isinstance(holder, bytes | str) and text(holder) == self._owner.me:
            return None
        return text(holder) if isinstance(holder, bytes | str) and holder else "nobody"

    def _check(self, conn: Any, replies: list[Any]) -> None:
        holder = self._holder(replies)
        if holder is not None:
            self.refused(f"the engine shard is held by {holder}")
        if self._chained:
            self._watching = getattr(conn, "_sock", None)

    def broken(self) -> None:
        """The connection failed mid-commit (it is dropped): watch the next one first."""
        self._watching = None
