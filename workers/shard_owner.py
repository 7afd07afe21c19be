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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psutil
from redis.exceptions import RedisError

from hean.celery_wire import holder_id
from hean.redis_client import text
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

# Take the lease from KEYS[1]'s holder ARGV[1] (gone), for ARGV[2]: only if it still holds it.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
# Renew ARGV[1]'s lease; take it again if it lapsed (a Redis outage longer than the TTL) and
# nobody took it meanwhile. 0: another holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


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

    def acquire(self, on_lost: Callable[[], None]) -> str | None:
        """Block until this process holds the lease, then renew it every OWNER_RENEW_S in a
        thread (`on_lost` is called there if another holder took it). Returns the holder it
        took over from, if any."""
        waiting_since = said_at = None
        while True:
            try:
                client = self._client()
                if client.set(ENGINE_OWNER_KEY, self.me, nx=True, ex=OWNER_TTL_S):
                    break
                holder = text(client.get(ENGINE_OWNER_KEY) or b"")
                if (
                    holder
                    and gone(holder, *(host_and_pid(self.me) or (None, None)))
                    and client.eval(_TAKE_OVER, 1, ENGINE_OWNER_KEY, holder, self.me, OWNER_TTL_S)
                ):
                    log.warning(
                        "event=engine_shard_taken_over holder=%s from=%s reason=holder_gone", self.me, holder
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
            except RedisError as exc:  # Redis away: nothing to consume anyway
                log.warning("event=engine_shard_unreachable error=%s", type(exc).__name__)
            time.sleep(WAIT_TRY_S)
        if waiting_since is not None:
            log.warning(
                "event=engine_shard_owned holder=%s waited_s=%.1f", self.me, time.monotonic() - waiting_since
            )
        self._start(on_lost)
        return None

    @property
    def held(self) -> bool:
        """This process took the lease (and has not given it back)."""
        return self._thread is not None and not self._stop.is_set()

    def _start(self, on_lost: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._renew, args=(on_lost,), name="hean-shard-owner", daemon=True
        )
        self._thread.start()

    def _renew(self, on_lost: Callable[[], None]) -> None:
        while not self._stop.wait(OWNER_RENEW_S):
            try:
                held = self._client().eval(_RENEW, 1, ENGINE_OWNER_KEY, self.me, OWNER_TTL_S)
            except RedisError:
                continue  # Redis away: the batches wait for it too; renewed once it is back
            if not held and not self._stop.is_set():
                log.critical("event=engine_shard_lost holder=%s action=stop", self.me)
                on_lost()
                return

    def release(self) -> None:
        """Give the lease back (after the last snapshot), so that the next worker starts now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * OWNER_RENEW_S)
        try:
            self._client().eval(_RELEASE, 1, ENGINE_OWNER_KEY, self.me)
        except RedisError as exc:  # the next worker waits for the TTL, or sees this pid gone
            log.warning("event=engine_shard_not_released error=%s", type(exc).__name__)
