"""Command intake: validate a command, reserve its request id, enqueue it, build the ack.

The ack says `accepted: true` only after the command passed validation and its task was
published to the broker. A request id seen before gets the original ack back (with
`duplicate: true`) and nothing is enqueued again: the Redis window (hean/command_journal.py)
knows the recent ones, the database (hean/history.py) the ones that left it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from hean import metrics
from hean.celery_wire import batch_frame
from hean.command_journal import CommandJournal, Reservation
from hean.commands import CONTROL_COMMANDS, command_names, get_command, validation_error
from hean.commands.fast_params import params_json
from hean.core.system.probes import REDIS_MEMORY_ORDERS_SHARE, MemoryCheck
from hean.db_reads import eventlet_patched
from hean.group_commit import GroupCommit
from hean.history import HistoryUnavailable
from hean.logs import FailureLog
from hean.messages import (
    CommandRequest,
    ErrorInfo,
    ack_message,
    envelope_json,
    new_request_id,
    now_ms,
)
from hean.redis_client import (
    DurabilityRule,
    DurabilityWatch,
    NotDurable,
    is_out_of_memory,
    unavailable_reason,
)
from hean.topology import BATCH_TASKS, MEMORY_RESERVE_KEY

log = logging.getLogger(__name__)

#: Largest encoded command (params included) accepted for the queue.
MAX_COMMAND_BYTES = 64 * 1024
#: Most commands the writer puts in one Celery task.
MAX_BATCH = 500
#: How long a handler waits for the writer to confirm the enqueue.
ENQUEUE_TIMEOUT_S = 5.0
#: Group commit (hean/group_commit.py): a batch that starts within this long of the previous
#: one's end waits `Settings.intake_linger_ms` for the commands arriving meanwhile.
LINGER_WINDOW_S = 0.005
#: How long sent acks wait for the next batch to journal them before being journaled alone.
ACK_JOURNAL_DELAY_S = 0.02
#: Longest the writer waits for the database's answer on a batch's earlier request ids (a
#: query of well under a millisecond), before refusing the batch `unavailable`: a database that
#: hangs (not one that refuses: that fails at once) would otherwise hold every command.
HISTORY_LOOKUP_TIMEOUT_S = 2.0
#: The commands still taken while Redis is nearly full (REDIS_MEMORY_ORDERS_SHARE of its
#: maxmemory, read once a second): those that stop or shrink trading and the control commands
#: around them. Orders wait (refused `unavailable`), so the room left is kept for these and for
#: the commits of commands already acked.
TAKEN_NEARLY_FULL = CONTROL_COMMANDS | {"cancel_order"}
#: What `CommandIntake.warm_up` validates (and looks up in the database): never enqueued.
WARM_UP_REQUEST_ID: Final = "hean-warm-up"
WARM_UP_COMMAND: Final = {
    "command": "submit_order",
    "params": {"client_order_id": "warm-up", "symbol": "BTCUSDT", "side": "BUY", "quantity": "1"},
    "request_id": WARM_UP_REQUEST_ID,
}


#: A warm-up step: its name (in `event=warm_up_failed` lines) and what it does.
WarmUpStep = tuple[str, Callable[[], object]]


def run_warm_up(steps: list[WarmUpStep]) -> list[str]:
    """Run each step; returns the names of those that failed, each logged (Redis or the database
    not there yet: the first command that needs it does it then)."""
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            failed.append(name)
            error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("event=warm_up_failed step=%s error=%s", name, error)
    return failed


@dataclass
class Outcome:
    """What the intake decided: the ack, and for a duplicate the earlier result if any."""

    ack: dict[str, Any]
    earlier_result: dict[str, Any] | None = None
    http_status: int = 202


class CommandIntake:
    """Validates commands on the handler's greenlet; the writer does all the Redis I/O."""

    def __init__(
        self, celery_app: Celery, journal: CommandJournal, durability: DurabilityRule, linger_s: float = 0.0
    ) -> None:
        self._writer = CommandWriter(celery_app, journal, durability, linger_s)

    def accept(self, data: Any, reply_to: str | None) -> Outcome:
        """Validate `data`, enqueue it for a worker, and return the ack (accepted or not).

        Blocks until the enqueue is confirmed (REST). Socket.IO uses :meth:`submit`.
        """
        checked = self._check(data, reply_to)
        if isinstance(checked, Outcome):
            return checked
        pending = checked
        done = pending.waitable()
        self._writer.submit(pending)
        if not done.wait(ENQUEUE_TIMEOUT_S):
            # The writer may still enqueue it: the client must not assume either way.
            metrics.refused("enqueue_timeout")
            return Outcome(
                pending.ack(
                    False,
                    ErrorInfo(
                        code="unavailable",
                        message=f"enqueue did not confirm within {ENQUEUE_TIMEOUT_S:g} s; the command "
                        "may still run: resend the same request_id, or GET /api/commands/<request_id>",
                    ),
                ),
                http_status=503,
            )
        assert pending.outcome is not None
        return pending.outcome

    def warm_up(self) -> list[str]:
        """Do now, as the web process starts serving, what its first command would otherwise
        wait for: the edge's validation run once, and the writer's database reader, durability
        rule, scripts and message frames (without it the first ack after a start took 27-47
        ms, the next ones 2-5: benchmarks/bench_first_ack.py). Each step may run beside a first
        command (each is safe to run twice). Returns the steps that failed (each logged): the
        first command tries those again. Never raises."""
        validation = ("validation", lambda: self._check(dict(WARM_UP_COMMAND), None))  # nothing kept
        return run_warm_up([validation, *self._writer.warm_up_steps()])

    def unjournaled_ack(self, request_id: str) -> dict[str, Any] | None:
        """The ack sent for `request_id` if it is not in the journal yet (this process only)."""
        return self._writer.unjournaled_ack(request_id)

    def stored_result(self, request_id: str) -> dict[str, Any] | None:
        """The result the journal holds for `request_id`, if it ran (a Redis round trip)."""
        record = self._writer.journal.get(request_id)
        return record["result"] if record is not None else None

    def submit(self, data: Any, reply_to: str | None, done: Callable[[Outcome], None]) -> None:
        """Like :meth:`accept`, without waiting: `done(outcome)` is called once the enqueue is
        confirmed (on the writer's greenlet), or at once for a rejected command.

        A connection's next command is read while this one is being enqueued, so one client's
        commands share the writer's batches (in the order they were sent) instead of paying a
        Redis round trip each.
        """
        checked = self._check(data, reply_to)
        if isinstance(checked, Outcome):
            done(checked)
            return
        checked.on_done = done
        self._writer.submit(checked)

    def _check(self, data: Any, reply_to: str | None) -> Outcome | PendingCommand:
        """Validate `data`: the rejection, or the command ready for the writer."""
        started = time.perf_counter()
        received_ms = now_ms()
        raw_id = data.get("request_id") if isinstance(data, dict) else None
        request_id = raw_id if isinstance(raw_id, str) and raw_id else new_request_id()
        raw_name = data.get("command") if isinstance(data, dict) else None
        name = raw_name if isinstance(raw_name, str) else None

        def reject(error: ErrorInfo, status: int = 400) -> Outcome:
            metrics.refused(error.code)
            ack_time_ms = round((time.perf_counter() - started) * 1000.0, 3)
            return Outcome(ack_message(request_id, name, False, ack_time_ms, error), http_status=status)

        if not isinstance(data, dict):
            return reject(
                ErrorInfo(
                    code="invalid_payload",
                    message="a command must be an object {command, params, request_id}, "
                    f"got {type(data).__name__}",
                )
            )
        try:
            request = CommandRequest.model_validate(data)
        except ValidationError as exc:
            return reject(validation_error(exc, "invalid_payload"))
        spec = get_command(request.command)
        if spec is None:
            return reject(
                ErrorInfo(
                    code="unknown_command",
                    message=f"unknown command {request.command!r}; valid commands: "
                    + ", ".join(command_names()),
                    field="command",
                ),
                status=404,
            )
        try:
            params = params_json(spec.params, request.params)
        except ValidationError as exc:
            return reject(validation_error(exc, "invalid_params", prefix="params."), status=422)

        encoded = envelope_json(request_id, spec.name, params, reply_to, received_ms)
        if len(encoded) > MAX_COMMAND_BYTES:
            return reject(
                ErrorInfo(
                    code="payload_too_large",
                    message=f"params: the command is {len(encoded)} bytes encoded; "
                    f"the limit is {MAX_COMMAND_BYTES}",
                    field="params",
                ),
                status=413,
            )
        return PendingCommand(request_id, spec.name, spec.queue, encoded, started)


class CommandWriter:
    """The one greenlet (or thread) that talks to Redis for the intake.

    Handlers hand it validated commands (REST handlers then wait; Socket.IO ones return and
    get called back); it takes whatever is waiting (batches grow with load on their own, no
    timer) and, per queue, reserves every request id and pushes one Celery task carrying the
    new ones in a single atomic round trip; then it delivers each ack. The acks are journaled
    after they were sent: by the next batch's script (no extra round trip under load), or by a
    second greenlet when no batch follows within ACK_JOURNAL_DELAY_S. One writer also keeps the
    web process far from the Redis connection limit.
    """

    def __init__(
        self, celery_app: Celery, journal: CommandJournal, durability: DurabilityRule, linger_s: float = 0.0
    ) -> None:
        self._celery = celery_app
        self._group_commit = GroupCommit(linger_s, LINGER_WINDOW_S)
        # the writer and the acks' greenlet take turns (`_journal_lock`) on one connection
        self._journal = journal.with_own_connection()
        self._durability = DurabilityWatch(durability, self._journal.client)  # asked at the first batch
        self._queue: queue.Queue[PendingCommand] = queue.Queue()
        self._unjournaled: list[dict[str, Any]] = []  # acks sent, not yet journaled
        self._journaling: set[int] = set()  # ids of those a script is journaling right now
        self._acks_waiting = threading.Event()
        self._acks_lock = threading.Lock()
        self._journal_lock = threading.Lock()  # held while a script journals acks (see _flush)
        # refused batches while the database or Redis is away: a line every 10 s, not one each
        self._history_failures = FailureLog(log)
        self._redis_failures = FailureLog(log)
        self._memory = MemoryCheck(self._journal.client)  # read by the writer, once a second
        self._memory_refusals = FailureLog(log)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, pending: PendingCommand) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    journal = threading.Thread(target=self._journal_acks, name="hean-acks", daemon=True)
                    journal.start()
                    self._thread = threading.Thread(target=self._run, name="hean-command-writer", daemon=True)
                    self._thread.start()
        self._queue.put(pending)

    @property
    def journal(self) -> CommandJournal:
        return self._journal

    def warm_up_steps(self) -> list[WarmUpStep]:
        """What the first batch would otherwise do first (see `CommandIntake.warm_up`): open the
        database reader, ask Redis how it keeps writes and how much memory it has left, load the
        scripts and build each queue's message frame."""
        history = self._journal.history
        return [
            ("history", lambda: history.answered([WARM_UP_REQUEST_ID]) if history else None),
            ("durability", self._durability.get),
            ("memory", self._read_memory),
            ("scripts", self._journal.load_intake_scripts),
            (
                "frames",
                lambda: [
                    batch_frame(self._celery, task, queue_name, "warm-up", "")
                    for queue_name, task in BATCH_TASKS.items()
                ],
            ),
        ]

    def unjournaled_ack(self, request_id: str) -> dict[str, Any] | None:
        with self._acks_lock:
            return next((a for a in reversed(self._unjournaled) if a["request_id"] == request_id), None)

    def _take_acks(self) -> list[dict[str, Any]]:
        """The acks waiting to be journaled that no one is journaling right now."""
        with self._acks_lock:
            acks = [a for a in self._unjournaled if id(a) not in self._journaling]
            self._journaling.update(map(id, acks))
        return acks

    def _settle_acks(self, acks: list[dict[str, Any]], journaled: bool) -> None:
        """Forget `acks` once journaled; otherwise they wait for the next try. Until then,
        `unjournaled_ack` still finds them."""
        taken = {id(a) for a in acks}
        with self._acks_lock:
            self._journaling -= taken
            if journaled:
                self._unjournaled = [a for a in self._unjournaled if id(a) not in taken]

    def _journal_acks(self) -> None:
        """Journal the acks no batch carried (for replies to a repeated request id)."""
        while True:
            self._acks_waiting.wait()
            self._acks_waiting.clear()
            time.sleep(ACK_JOURNAL_DELAY_S)  # usually the next batch carries them meanwhile
            with self._journal_lock:
                self._record_acks()

    def _record_acks(self) -> None:
        acks = self._take_acks()
        if not acks:
            return
        journaled = False
        try:
            self._journal.record_acks(acks)
            journaled = True
        except RedisError as exc:  # the commands are queued; the acks wait for the next try
            log.warning("event=acks_not_journaled size=%d error=%s", len(acks), exc)
        except Exception:  # never let the journal greenlet die
            log.exception("event=ack_journal_failed size=%d", len(acks))
        finally:
            self._settle_acks(acks, journaled)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            self._group_commit.wait()  # a green sleep: the connections' readers queue more meanwhile
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._flush(batch)
            except Exception:  # never let the writer die: fail this batch, keep serving
                log.exception("event=writer_failed size=%d", len(batch))
                for pending in batch:
                    if pending.outcome is None:
                        pending.unavailable("internal error; retry", "internal")
            self._group_commit.done()

    def _answered_before(self, batch: list[PendingCommand]) -> list[PendingCommand] | None:
        """Answer the commands whose request id left the Redis window but whose result is in
        the database (the window misses them: they must not run again); the others remain.
        None when the database cannot be read: the batch is refused (retry), never run twice."""
        history = self._journal.history
        if history is None:
            return batch
        try:
            # no deadline where it could not interrupt the lookup (SQLite): arming and cancelling
            # an eventlet timer per batch was 1.7% of the web's CPU at 1,000 single orders/s
            with contextlib.nullcontext() if history.waits_in_c else _deadline(HISTORY_LOOKUP_TIMEOUT_S):
                answered = history.answered([p.request_id for p in batch])
        except (HistoryUnavailable, LookupTimeout) as exc:
            self._history_failures.failed("event=enqueue_failed reason=history_unreadable error=%s", exc)
            for pending in batch:
                pending.unavailable("command history unreachable; retry", "history")
            return None
        self._history_failures.recovered("event=enqueue_recovered reason=history_readable")
        if not answered:
            return batch
        remaining = []
        for pending in batch:
            record = answered.get(pending.request_id)
            if record is None:
                remaining.append(pending)
            else:
                # the database may have its result before its ack (journaled after it was sent)
                ack = record.ack or self.unjournaled_ack(pending.request_id)
                ack = ack or self._journal.window_ack(pending.request_id)
                pending.duplicate(Reservation(new=False, ack=ack, result=record.result))
        return remaining

    def _read_memory(self) -> None:
        """Read Redis's memory, and make the reserve for TAKEN_NEARLY_FULL if there is none and
        there is room for it (MemoryCheck.keep_reserve)."""
        self._memory.read()
        try:
            made = self._memory.keep_reserve()
        except ResponseError as exc:  # refused (an ACL, a renamed command): once per reason
            log.error(
                "event=memory_reserve_refused key=%s error=%s retry_in_s=%.0f",
                MEMORY_RESERVE_KEY,
                exc,
                self._memory.reserve_retry_s,
            )
            return
        if made:
            log.info("event=memory_reserve_made bytes=%d key=%s", made, MEMORY_RESERVE_KEY)

    def _release_reserve(self, items: list[PendingCommand]) -> bool:
        """Free the memory reserve for `items` (commands of TAKEN_NEARLY_FULL that a full Redis
        refused); True if it freed any."""
        try:
            freed = self._memory.release_reserve()
        except RedisError as exc:
            log.error("event=memory_reserve_not_released error=%s", exc)
            return False
        if freed:
            commands = ",".join(sorted({p.command for p in items}))
            log.warning(
                "event=memory_reserve_released bytes=%d commands=%s reason=redis_full", freed, commands
            )
        return bool(freed)

    def _room_for(self, batch: list[PendingCommand]) -> list[PendingCommand]:
        """The commands Redis has room for: from REDIS_MEMORY_ORDERS_SHARE of its maxmemory on,
        only those of TAKEN_NEARLY_FULL; the others are refused `unavailable`, nothing enqueued."""
        if self._memory.due:
            with contextlib.suppress(RedisError):  # the reservation says what is wrong with Redis
                self._read_memory()
        share = self._memory.share
        if share is None or share < REDIS_MEMORY_ORDERS_SHARE:
            self._memory_refusals.recovered("event=enqueue_recovered reason=redis_memory")
            return batch
        kept = [pending for pending in batch if pending.command in TAKEN_NEARLY_FULL]
        if len(kept) == len(batch):
            return batch
        message = (
            f"Redis memory at {share:.0%} of its maxmemory: from {REDIS_MEMORY_ORDERS_SHARE:.0%} on "
            "only control commands and cancels are taken (a kill_switch still is); nothing was "
            "enqueued; retry with the same request_id once memory is freed (the history writer "
            "frees it when the database takes writes: see the db module) or maxmemory is raised"
        )
        for pending in batch:
            if pending.command not in TAKEN_NEARLY_FULL:
                pending.unavailable(message, "redis_memory")
        self._memory_refusals.failed(
            "event=enqueue_failed reason=redis_memory share=%.2f", share, level=logging.WARNING
        )
        return kept

    def _flush(self, batch: list[PendingCommand]) -> None:
        remaining = self._room_for(self._answered_before(batch) or [])
        if not remaining:
            return
        by_queue: dict[str, list[PendingCommand]] = {}
        for pending in remaining:
            by_queue.setdefault(pending.queue, []).append(pending)
        acks = []
        for queue_name, items in by_queue.items():
            # one journal write at a time: a repeat reserved while the acks' greenlet journals
            # its first copy's ack would find that ack neither in Redis nor still unjournaled
            with self._journal_lock:
                acks += self._enqueue(queue_name, items)
        if acks:
            with self._acks_lock:
                self._unjournaled += acks
            metrics.unjournaled(len(self._unjournaled))
            self._acks_waiting.set()

    def _enqueue(self, queue_name: str, items: list[PendingCommand]) -> list[dict[str, Any]]:
        """Reserve and enqueue `items` (one queue's) with the acks waiting to be journaled; settle
        each command; returns the acks sent for the new ones."""
        acks: list[dict[str, Any]] = []
        task_id = f"batch-{items[0].request_id}-{len(items)}"
        commands = ", ".join(sorted({p.command for p in items}))
        frame = batch_frame(self._celery, BATCH_TASKS[queue_name], queue_name, task_id, commands)
        earlier = self._take_acks()
        journaled = False
        stopping: list[PendingCommand] = []  # tried again once a full Redis freed the reserve
        try:
            durable = self._durability.get()
            reservations = self._journal.reserve_and_enqueue(
                [(p.request_id, p.command, p.encoded) for p in items],
                queue_name,
                frame,
                earlier,
                durable,
            )
            journaled = True
            self._redis_failures.recovered("event=enqueue_recovered reason=redis")
        except NotDurable as exc:  # reserved and queued, but not on disk (or replicas) in time
            journaled = True
            log.error("event=enqueue_not_durable queue=%s size=%d error=%s", queue_name, len(items), exc)
            for pending in items:
                pending.unavailable(
                    f"queued but not confirmed durable ({exc}); it may still run: resend the same "
                    "request_id to learn its outcome",
                    "not_durable",
                )
            return acks
        except RedisError as exc:  # atomic: nothing was reserved, nothing enqueued
            full = is_out_of_memory(exc)
            reason = "redis_memory" if full else "redis"
            self._redis_failures.failed("event=enqueue_failed reason=%s error=%s", reason, exc)
            message = f"{unavailable_reason(exc)}: nothing was enqueued; retry with the same request_id"
            if full:
                stopping = [pending for pending in items if pending.command in TAKEN_NEARLY_FULL]
                if not (stopping and self._release_reserve(stopping)):
                    stopping = []
            tried_again = set(map(id, stopping))
            for pending in items:
                if id(pending) not in tried_again:
                    pending.unavailable(message, reason)
            if not stopping:
                return acks
        finally:
            self._settle_acks(earlier, journaled)
        if stopping:  # once: the reserve is gone now
            return self._enqueue(queue_name, stopping)
        for pending, reservation in zip(items, reservations, strict=True):
            if reservation.new:
                acks.append(pending.accept())
            elif reservation.ack is None and (
                sent := next((a for a in acks if a["request_id"] == pending.request_id), None)
                or self.unjournaled_ack(pending.request_id)
            ):
                # its ack is out but not journaled yet (earlier in this very batch, or the acks'
                # own greenlet may be writing it right now): the repeat gets that ack, not a new one
                pending.duplicate(Reservation(new=False, ack=sent, result=reservation.result))
            elif reservation.ack is None:
                # reserved and queued, its ack never sent (the web process that took it died
                # first): this ack is the command's first, journaled like any other
                acks.append(pending.duplicate(reservation))
            else:
                pending.duplicate(reservation)
        metrics.enqueued(queue_name, len(items), items[0].started)
        return acks


class LookupTimeout(Exception):
    """The database did not answer within HISTORY_LOOKUP_TIMEOUT_S."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise LookupTimeout in the block after `seconds`, in the web process (eventlet, whose
    green waits can be interrupted: psycopg's included, web/__main__.py). A blocking call that
    never yields (SQLite's, well under a millisecond) runs to its end. Elsewhere (tests on
    threads) the block runs without one."""
    if not eventlet_patched():
        yield
        return
    import eventlet

    timeout = eventlet.Timeout(seconds, LookupTimeout(f"history lookup took over {seconds:g} s"))
    try:
        yield
    finally:
        timeout.cancel()


class PendingCommand:
    """A validated command waiting for the writer: `outcome` is set, then `on_done` called
    (Socket.IO), or the event of `waitable()` set (REST)."""

    __slots__ = ("command", "done", "encoded", "on_done", "outcome", "queue", "request_id", "started")

    def __init__(self, request_id: str, command: str, queue_name: str, encoded: str, started: float) -> None:
        self.request_id, self.command, self.queue = request_id, command, queue_name
        self.encoded, self.started = encoded, started
        # Only a REST caller waits: an Event for every Socket.IO command cost 5% of the web
        # process's CPU per order under eventlet.
        self.done: threading.Event | None = None
        self.outcome: Outcome | None = None
        self.on_done: Callable[[Outcome], None] | None = None

    def waitable(self) -> threading.Event:
        """The event set when the outcome is known (call before the writer has the command)."""
        self.done = threading.Event()
        return self.done

    def ack(self, accepted: bool, error: ErrorInfo | None = None, duplicate: bool = False) -> dict[str, Any]:
        ack_time_ms = round((time.perf_counter() - self.started) * 1000.0, 3)
        return ack_message(self.request_id, self.command, accepted, ack_time_ms, error, duplicate)

    def _finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if self.done is not None:
            self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(outcome)
            except Exception:  # a client gone mid-ack must not take the writer down
                log.exception("event=ack_delivery_failed request_id=%s", self.request_id)

    def accept(self) -> dict[str, Any]:
        ack = self.ack(True)
        self._finish(Outcome(ack))
        return ack

    def unavailable(self, message: str, reason: str) -> None:
        """Refuse it `unavailable` (HTTP 503), counted by `reason` (hean_commands_refused)."""
        metrics.refused(reason)
        error = ErrorInfo(code="unavailable", message=message)
        self._finish(Outcome(self.ack(False, error), http_status=503))

    def duplicate(self, reservation: Reservation) -> dict[str, Any]:
        """Answer a repeated request id: the original ack if it was journaled, else a new one
        (the first copy is being enqueued right now, or its ack was never sent). Returns it."""
        ack = dict(reservation.ack, duplicate=True) if reservation.ack else self.ack(True, duplicate=True)
        self._finish(Outcome(ack, earlier_result=reservation.result, http_status=200))
        return ack
