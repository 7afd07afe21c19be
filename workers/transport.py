"""kombu's Redis transport, made to survive losing Redis while a task is unacknowledged.

When the broker connection drops, Celery's recovery collects the broken connection, which
detaches kombu's transport from it (`transport.client = None`), and reconnects with a new one.
Channels of the old connection live on: Celery closes the default channel again, and a task
that was running (late ack) acknowledges its message through the channel it came from. Both
need a Redis client, and kombu builds one from `transport.client`, so each raised
AttributeError ("'NoneType' object has no attribute 'hostname'"). Celery takes that for a bug,
not a lost connection: the worker stopped with "Unrecoverable error" instead of reconnecting
(the family of celery#4652 and kombu#582).

Here a detached transport raises redis's ConnectionError instead, which Celery and kombu
already handle as a lost connection (the close is skipped, the ack is logged as failed). The
message itself is not lost: it stays in Redis's unacked set and is delivered again after the
visibility timeout, like any message whose worker lost its connection.

One client per channel. kombu builds a new `redis.Redis` object for every operation that is
not given one (each publish, each task event, each unacked-set entry and each ack), about a
twentieth of the engine worker's CPU per lone order. Here a channel builds one per pool and
keeps it: a Redis object is only a handle on the pool, safe to share between threads, and a
new pool (after a reconnect) gets a new one.

Faster reading. kombu reads every message twice with the standard library's JSON and an
object hook (the message, then its body): a quarter of the engine worker's CPU in 100-order
commands. Here both go through hean.fastjson (orjson where it gives the same values), and kombu's
own reader, hook included, keeps every message that carries one of its typed values
("__type__": datetimes, decimals, UUIDs).

It also makes a queue declared with ``no_ack=True`` (the pulse queue, celeryconfig.py) cost
what no_ack promises. kombu's virtual transport keeps no unacknowledged copy of such a
message, but the Message's `ack()` still reached the Redis QoS, which removed the copy that
was never added: a MULTI/ZREM/HDEL/EXEC round trip per message, ten a second for the pulse.
Here the ack of a message delivered without acknowledgement is a no-op.

A Redis out of memory (maxmemory reached, `noeviction`) is the other case: kombu pops a
message off the queue, then records it as delivered and unacknowledged (ZADD + HSET, which
Redis refuses while full). kombu took the refusal as fatal: the worker stopped with
"Unrecoverable error: OutOfMemoryError", and the popped message, recorded nowhere, was lost
with it (acked commands included). Here the record is retried until Redis has room again,
holding the message; the worker does nothing else meanwhile, and neither could it. An atomic
queue's pop (below) is refused while Redis is full too, and while it cannot save its snapshots
(MISCONF), which refuses every consumer's BRPOP as well: the consumer waits and pops again
(`Channel._wait_for_writes`), where kombu stopped the worker.

Atomic delivery for a queue with exactly one consumer (the engine queue; transport option
``hean_atomic_queues``, celeryconfig.py). kombu pops a message (BRPOP), then records it as
delivered and unacknowledged in a second step: a consumer killed between the two (SIGKILL, OOM)
lost the message, acked commands included, and so did a connection dropped after Redis popped
it but before the reply arrived. Here the pop is a BLMOVE into the queue's delivering list
(`delivering_key`), and the message stays there until it is acknowledged: the list is its
record, so a message is always on the queue or in the delivering list, and no second write
(kombu's ZADD + HSET of the whole message into the unacked set, and their removal at the ack)
is needed. A consumer that commits its work to Redis can acknowledge the message inside that
very commit (`QoS.ack_within`, used by the engine worker): the message is done exactly when its
batch is, in the same MULTI. What a dead predecessor (or a dropped connection) left in the
delivering list goes back to the consuming end of the queue, marked redelivered, before the
next pop (`restore_delivering`), and every STRAYS_CHECKED_EVERY_S after: a consumer replaced
meanwhile (an engine worker frozen past its lease, which pops once more before it sees that and
stops) can leave messages there that the one consumer was never delivered. With the transport
option ``hean_atomic_owner_keys`` only the process that key names (the engine shard's lease
holder) puts them back. Such a queue has no visibility timeout (nothing is in the unacked set
for kombu to restore): only its consumer gives a message back, and it is the only one who could
take it.
Such a queue takes no priorities: celeryconfig.py maps every priority onto the queue's one list
(``priority_steps=[0]``), as an ordered queue needs.

Queues with several consumers (llm, default) keep kombu's record of a delivery, plus who holds
it (hean.celery_wire.HOLDERS_KEY, in the same MULTI) under a lease its worker renews: every
consumer's periodic restore (`QoS.restore_visible`) first puts back the messages whose holder's
lease lapsed, so a killed worker's commands run again within seconds, not after the visibility
timeout.

celeryconfig.py selects this transport for redis:// broker URLs; rediss:// and sentinel keep
kombu's own (where the pulse queue's no_ack still spares the bookkeeping at delivery).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

from kombu.serialization import registry
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils import json as kombu_json
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, OutOfMemoryError, RedisError, ResponseError

from hean import fastjson
from hean.celery_wire import (
    HOLDERS_KEY,
    LEASE_S,
    NotTheOwner,
    delivering_key,
    holder_id,
    lease_key,
    restore_delivering,
    restore_held,
)
from hean.logs import FailureLog
from hean.redis_client import text

log = logging.getLogger(__name__)

DETACHED = "the broker connection this channel belonged to was closed"
#: How often an atomic queue's consumer puts back what it does not hold in the queue's delivering
#: list (Channel._restore_strays): one LRANGE each time, between pops.
STRAYS_CHECKED_EVERY_S = 2.0
#: Pauses between tries to record a delivery while Redis is full: first and most.
FULL_RETRY_FIRST_S, FULL_RETRY_MAX_S = 0.1, 1.0


def _writes_refused(exc: ResponseError) -> str | None:
    """Why Redis refused a write for now (full, or unable to persist), or None for any other
    refusal (a wrong type, a missing permission: not something waiting would mend)."""
    if isinstance(exc, OutOfMemoryError):
        return "redis_out_of_memory"
    if str(exc).startswith("MISCONF"):
        return "redis_cannot_persist"
    return None


class PopRefused(Exception):
    """Redis refused a consumer's BRPOP for now (`_writes_refused`): nothing was popped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.cache
def _refusing_pops(base: type) -> type:
    """`base` (the client class kombu's channel builds) whose read of a BRPOP's reply raises
    PopRefused for a refusal that waiting mends. A Redis that cannot save its snapshots
    (MISCONF) refuses BRPOP as a write: kombu read the refusal as fatal, and the worker stopped
    ("Unrecoverable error"). Only the pop's own reply is read this way: a refusal of what comes
    after a message was popped (its record) is never taken for "nothing popped"."""

    class RefusingPops(base):
        def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
            try:
                return super().parse_response(connection, command_name, **options)
            except ResponseError as exc:
                reason = _writes_refused(exc) if command_name == "BRPOP" else None
                if reason is None:
                    raise
                raise PopRefused(reason) from exc

    return RefusingPops


def _out_of_memory(exc: BaseException) -> bool:
    # a MULTI whose queued commands Redis refused ends in ExecAbortError, raised from the OOM
    return isinstance(exc, OutOfMemoryError) or isinstance(exc.__context__, OutOfMemoryError)


class QoS(kombu_redis.QoS):
    #: Messages of holders without a lease are restored only once Redis has been up this long.
    restore_after_uptime_s: float = LEASE_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tag -> (queue, message) of atomically popped messages held in their
        #: delivering list until acknowledged (no unacked record: the list is the record).
        self._held: dict[Any, tuple[str, bytes]] = {}
        #: Held messages whose removal rode in the caller's own commit (`ack_within`).
        self._acked_within: set[Any] = set()
        self._restore_failures = FailureLog(log)

    def append(self, message: Any, delivery_tag: Any) -> None:
        # the message an atomic pop moved to its delivering list, if this is it (Transport.moved)
        transport = self.channel.connection
        moved, transport.moved = transport.moved, None
        if moved is not None:  # the delivering list holds it until the ack: nothing to write
            self._held[delivery_tag] = moved
            virtual.QoS.append(self, message, delivery_tag)
            return
        delay, tries = FULL_RETRY_FIRST_S, 0
        while True:
            try:
                self._record(message, delivery_tag)
                return
            except (OutOfMemoryError, ExecAbortError) as exc:
                if not _out_of_memory(exc):
                    raise
                tries += 1
                log.error(
                    "event=delivery_not_recorded reason=redis_out_of_memory tag=%s tries=%d action=retry",
                    delivery_tag,
                    tries,
                )
                time.sleep(delay)
                delay = min(FULL_RETRY_MAX_S, delay * 2)

    def _record(self, message: Any, delivery_tag: Any) -> None:
        """kombu's QoS.append: the unacked hash and its index, and who holds the message (with
        the holder's lease renewed), in one MULTI."""
        delivery = message.delivery_info
        entry = kombu_json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        holder = holder_id()
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, entry)
            pipe.hset(HOLDERS_KEY, delivery_tag, holder)
            pipe.set(lease_key(holder), "1", ex=LEASE_S)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        # every way out of the unacked hash (ack, reject, a restore) forgets the holder too
        return super()._remove_from_indices(delivery_tag, pipe).hdel(HOLDERS_KEY, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's restore of messages older than the visibility timeout (every `interval`-th
        call), and first, at every call (each unacked_restore_interval, celeryconfig.py), the
        messages whose holder's lease lapsed: a killed worker's go back to their queue seconds
        after, not an hour."""
        try:
            restored = self.restore_orphans()
        except RedisError as exc:  # Redis away (or INFO refused): the next call tries again
            self._restore_failures.failed(
                "event=orphans_not_restored error=%s", type(exc).__name__, level=logging.WARNING
            )
        else:
            self._restore_failures.recovered("event=orphans_restore_recovered")
            if restored:
                log.warning("event=orphans_restored messages=%d", restored)
        super().restore_visible(start=start, num=num, interval=interval)

    def restore_orphans(self) -> int:
        """Put back on their queues the unacknowledged messages whose holder's lease lapsed (see
        hean.celery_wire.HOLDERS_KEY); returns how many. Any consumer may call it: each
        restore is a transaction on the unacked hash, so a message comes back once."""
        with self.channel.conn_or_acquire() as client:
            holders = {tag: text(holder) for tag, holder in client.hgetall(HOLDERS_KEY).items()}
            if not holders:
                return 0
            me = holder_id()
            others = sorted({holder for holder in holders.values() if holder != me})
            with client.pipeline(transaction=False) as pipe:
                for holder in others:
                    pipe.exists(lease_key(holder))
                alive = {holder for holder, lives in zip(others, pipe.execute(), strict=True) if lives}
            orphans = [tag for tag, holder in holders.items() if holder != me and holder not in alive]
            # a Redis that restarted (or came back) less than a lease ago may have let the leases
            # of live holders lapse meanwhile: they renew theirs within a second of reconnecting
            if not orphans or int(client.info("server")["uptime_in_seconds"]) < self.restore_after_uptime_s:
                return 0
            restored = 0
            for tag in orphans:
                restored += int(client.hexists(self.unacked_key, tag))
                self.restore_by_tag(tag, client)  # also forgets a holder whose message is gone
            return restored

    def ack_within(self, pipe: Any, delivery_tag: Any) -> bool:
        """Queue the acknowledgement of a held message on `pipe` (the caller's commit, a MULTI):
        the message is done exactly when what it carried is committed, in one round trip. The
        later `ack()` then only forgets it here. False if the message is not held (a message
        of kombu's own bookkeeping: acknowledge it as usual)."""
        held = self._held.get(delivery_tag)
        if held is None:
            return False
        _release(pipe, held)
        self._acked_within.add(delivery_tag)
        return True

    def ack(self, delivery_tag: Any) -> None:
        held = self._held.pop(delivery_tag, None)
        if held is None:
            super().ack(delivery_tag)
            return
        if delivery_tag in self._acked_within:
            self._acked_within.discard(delivery_tag)
        else:
            with self.channel.conn_or_acquire() as client:
                _release(client, held)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if delivery_tag not in self._held:
            super().reject(delivery_tag, requeue=requeue)
            return
        if requeue:
            self.restore_by_tag(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            self.ack(delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        held = self._held.pop(tag, None)
        if held is None:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)
            return
        self._acked_within.discard(tag)
        with self.channel.conn_or_acquire(client) as client:
            restore_held(client, held[0], held[1])


def _release(client: Any, held: tuple[str, bytes]) -> None:
    """Take a held (queue, message) out of the queue's delivering list: its acknowledgement."""
    client.lrem(delivering_key(held[0]), 1, held[1])


_TYPED = '"__type__"'
_TYPED_BYTES = _TYPED.encode()


def has_typed_values(data: str | bytes) -> bool:
    """Whether `data` (JSON) may hold kombu's typed values, which only kombu's reader decodes."""
    return (_TYPED_BYTES in data) if isinstance(data, bytes) else (_TYPED in data)


def loads(data: Any) -> Any:
    """What `kombu.utils.json.loads(data)` returns, faster for messages without typed values."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if has_typed_values(data):
        return kombu_json.loads(data)
    return fastjson.loads(data)


def install_fast_reading() -> None:
    """Read the transport's messages and JSON bodies with `loads` (this process)."""
    # the Redis transport reads each message with this module global, one argument each time
    kombu_redis.loads = loads  # type: ignore[assignment]  # kombu.utils.json.loads takes optional extras
    registry.register(
        "json", kombu_json.dumps, loads, content_type="application/json", content_encoding="utf-8"
    )


install_fast_reading()


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared: tuple[Any, Any] | None = None  # (pool, the client built on it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags of messages delivered to no_ack consumers and not yet "acknowledged".
        self._untracked: set[str] = set()
        options = self.connection.client.transport_options
        #: Queues popped atomically (one consumer each); the one being popped now, if any.
        self._atomic = frozenset(options.get("hean_atomic_queues", ()))
        self._moving: str | None = None
        #: Atomic queues whose delivering list may hold a message no record took out of it.
        self._unchecked: set[str] = set(self._atomic)
        #: Atomic queue -> the key naming its one consumer (the engine shard's lease): a restore
        #: of its delivering list runs only while that key names this process.
        self._owner_keys: dict[str, str] = dict(options.get("hean_atomic_owner_keys", {}))
        #: When each atomic queue's delivering list was last checked for strays.
        self._checked_at: dict[str, float] = {}
        self._restore_failures = FailureLog(log)
        self._pop_refused = FailureLog(log)
        self._binding_refused = FailureLog(log)
        #: The next wait while Redis refuses the atomic pop (full, or unable to persist).
        self._room_wait_s = FULL_RETRY_FIRST_S

    def _get_client(self) -> Any:
        return _refusing_pops(super()._get_client())

    def maybe_refresh_binding_expiry(self) -> None:
        """kombu's refresh of this channel's queue bindings (a script), its refusal logged as a
        recurring failure: a full Redis refuses the script (consuming goes on), and kombu logged
        that with its traceback, 25 lines a second per worker for as long as Redis stayed full."""
        try:
            super().maybe_refresh_binding_expiry()
        except self.ResponseError as exc:  # tried again at the next cycle, as kombu does
            self._binding_refused.failed(
                "event=binding_refresh_refused error=%s action=retry",
                type(exc).__name__,
                level=logging.WARNING,
            )
            return
        self._binding_refused.recovered("event=binding_refresh_recovered")

    # -- atomic delivery ------------------------------------------------------------------------

    def _brpop_start(self, timeout: Any = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if len(queues) != 1 or queues[0] not in self._atomic or self.global_keyprefix:
            super()._brpop_start(timeout)
            return
        queue = queues[0]
        now = time.monotonic()
        if queue in self._unchecked or now - self._checked_at.get(queue, now) >= STRAYS_CHECKED_EVERY_S:
            self._restore_strays(queue, now)
        self._in_poll = self.client.connection
        self._moving = queue
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu declares it None
        self.client.connection.send_command(
            "BLMOVE",
            queue,
            delivering_key(queue),
            "RIGHT",
            "LEFT",
            self.brpop_timeout if timeout is None else timeout,
        )

    def _restore_strays(self, queue: str, now: float) -> None:
        """Put back what this channel does not hold in `queue`'s delivering list: left over by a
        dead consumer, moved by a pop whose reply was lost, or popped by a consumer replaced
        meanwhile (an engine worker frozen past its lease runs again and pops before it sees the
        takeover, then stops). Called while nothing is being delivered; then every STRAYS_CHECKED_EVERY_S."""
        held = [raw for held_queue, raw in self.qos._held.values() if held_queue == queue]
        try:
            with self.conn_or_acquire() as client:
                restored = restore_delivering(client, queue, held, self._owner_keys.get(queue))
        except NotTheOwner:  # replaced itself: it stops, and leaves the list to the owner
            log.warning("event=delivering_not_restored queue=%s reason=not_the_owner", queue)
            restored = 0
        except self.connection_errors:  # Redis away: the pop fails too, and the consumer reconnects
            raise
        except RedisError as exc:  # full (the restore writes): the messages wait in the list
            self._restore_failures.failed(
                "event=delivering_not_restored queue=%s error=%s action=retry", queue, type(exc).__name__
            )
            self._checked_at[queue] = now
            return
        self._restore_failures.recovered("event=delivering_restore_recovered queue=%s", queue)
        if restored:
            log.warning("event=delivering_restored queue=%s messages=%d", queue, restored)
        self._unchecked.discard(queue)
        self._checked_at[queue] = now

    def _wait_for_writes(self, queue: str, reason: str) -> None:
        """Redis refuses BLMOVE, which may create the delivering list, for now: full (maxmemory,
        noeviction; BRPOP it would run), or unable to save its snapshots (MISCONF, which refuses
        BRPOP too). kombu took the refusal as fatal: the worker stopped ("Unrecoverable error"),
        and until something started it again nobody ran what the web had acked (the engine
        queue) or the pulse. The consumer waits instead (it could not commit its work meanwhile
        either), longer at each refusal up to FULL_RETRY_MAX_S, and pops again."""
        self._pop_refused.failed("event=pop_refused queue=%s reason=%s action=retry", queue, reason)
        time.sleep(self._room_wait_s)
        self._room_wait_s = min(FULL_RETRY_MAX_S, self._room_wait_s * 2)

    def _popped_again(self, queue: str | None = None) -> None:
        if self._pop_refused.failures:
            queue = queue or ",".join(sorted(self.active_queues))
            self._pop_refused.recovered("event=pop_recovered queue=%s", queue)
            self._room_wait_s = FULL_RETRY_FIRST_S

    def _brpop_read(self, **options: Any) -> Any:
        queue, self._moving = self._moving, None
        if queue is None:
            try:
                delivered = super()._brpop_read(**options)
            except PopRefused as refused:
                self._wait_for_writes(",".join(sorted(self.active_queues)), refused.reason)
                raise Empty() from None  # nothing popped: the loop pops again
            except Empty:
                self._popped_again()
                raise
            self._popped_again()
            return delivered
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                self._unchecked.add(queue)  # Redis may have moved a message whose reply was lost
                raise
            except ResponseError as exc:
                reason = _writes_refused(exc)
                if reason is None:
                    raise
                self._wait_for_writes(queue, reason)
                raise Empty() from None  # nothing moved: the loop pops again
            self._popped_again(queue)
            if item is None:
                raise Empty()
            transport = self.connection
            transport.moved = (queue, item)
            stopping = False
            try:
                transport._deliver(loads(item), queue)
            except BaseException as exc:
                # the worker stops (Celery's hard shutdown raises wherever the consumer is): what
                # was not yet recorded stays in the delivering list, restored at the next start
                stopping = not isinstance(exc, Exception)
                raise
            finally:
                if transport.moved is not None:  # delivered without a record (a no_ack consumer)
                    transport.moved = None
                    if not stopping:
                        with self.conn_or_acquire() as client:
                            client.lrem(delivering_key(queue), 1, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu resets it
            self._flush_brpop_reauth()

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        if no_ack:
            untracked, deliver = self._untracked, callback

            def callback(message: Any) -> Any:
                untracked.add(message.delivery_tag)
                return deliver(message)

        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        if delivery_tag in self._untracked:  # nothing in Redis to remove
            self._untracked.discard(delivery_tag)
            return
        super().basic_ack(delivery_tag, multiple=multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if delivery_tag in self._untracked:  # a no_ack message cannot go back
            self._untracked.discard(delivery_tag)
            return
        super().basic_reject(delivery_tag, requeue=requeue)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError(DETACHED)
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, self._create_client())
        yield shared[1]


class Transport(kombu_redis.Transport):
    Channel = Channel
    #: (queue, message) of the message an atomic pop is delivering, until QoS.append holds it.
    moved: tuple[str, bytes] | None = None

    @property
    def supports_batch_publish(self) -> bool:
        if self.client is None:
            return False
        return bool(super().supports_batch_publish)
