"""The Pulse: real probes of every module, classified by latency, with a reconnect policy.

The original docs' API works as written::

    from hean.core.system.health_monitor import get_health_monitor
    monitor = await get_health_monitor(); status = monitor.get_health_status()

`get_health_monitor()` loads the last pulse from the state bus (namespace ``health``), so a
script sees what the pulse worker measured; `HealthMonitor.check_all()` (sync) probes now and
is what the 100 ms pulse task runs. Classification: HEALTHY <= 50 ms, DEGRADED <= 200 ms,
UNHEALTHY slower or on an error, DISCONNECTED when the module cannot be reached. A module
slower than 50 ms, or failing 3 times in a row, has its `reconnect()` called (with backoff).

Timing: every probe runs in its own thread (or a group of probes of one resource in one
thread, one after another, each timed from the pulse's start and recorded as soon as it
answers), except a probe that the pulse runs itself: one that does no I/O it could wait on
long (`inline`: timed from its own start, or its group's), and one that sends a request and
then looks for the reply without blocking (`start`, the engine ping: timed from the pulse's
start to when the pulse reads the reply); each has at most one check in flight. A pulse waits at most
`PULSE_BUDGET_S` (80 ms) for the answers; a check still running then is reported by how long
it has been waiting (DEGRADED past 50 ms, UNHEALTHY past 200 ms, DISCONNECTED past the probe's
own timeout) and is collected, with its real latency, by a later pulse. So a slow or hung
module never delays the pulse or the modules of other threads, and checks never pile up. (A
thread hand-off costs a few hundred microseconds of CPU on a small VM, ten times a second per
thread: benchmarks/bench_idle.py.)

Where it lives in Redis: the state bus (hean.core.system.redis_state), namespace ``health``:
``pulse`` (the summary: overall, modules, at, took_ms, slot, late_ms, delivery_ms, period_s; every pulse),
one key per module (``cpp_core``, ``redis``, ...: when its status changes, else once a second,
MODULE_REFRESH_S) and ``nodes`` ({node: {at, overall}}, one entry per
pulse worker). Raw keys the probes read: ``hean:web:heartbeat`` (web/heartbeat.py), the hash
``hean:workers`` ({node: last beat}, every Celery worker, workers/app.py) and
``hean:pong:<uuid>`` (the engine worker's answer to a cpp_core ping, kept 5 s).

Several pulse nodes share these keys. `store_pulse()` writes a pulse only if the stored one
began earlier (a slow node never replaces a newer pulse with its older one), and
`report_node()` drops nodes silent for longer than NODE_RETENTION_S from ``nodes``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hean.core.system.redis_state import StateItem, StateOp, SyncRedisStateManager

log = logging.getLogger(__name__)

HEALTHY_MS = 50.0
DEGRADED_MS = 200.0
FAILURES_BEFORE_RECONNECT = 3
#: How long one pulse waits for the probes' answers (the pulse period is 100 ms).
PULSE_BUDGET_S = 0.08
#: A check unanswered for this long makes its module DISCONNECTED (a probe may set its own).
PROBE_TIMEOUT_S = 0.5
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
#: State bus namespace of the pulse; one key per module plus "pulse" (the summary).
HEALTH_NAMESPACE = "health"
SUMMARY_KEY = "pulse"
MODULES = ("cpp_core", "redis", "db", "exchange_api", "frontend_socket", "workers")


class HealthStatus(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"
    DISCONNECTED = "DISCONNECTED"


class Unreachable(Exception):
    """The module could not be reached at all (as opposed to answering badly).

    `detail`, if given, replaces the module's detail (what the check still found out).
    """

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class ModuleFault(Exception):
    """The module answered, and the answer is bad (UNHEALTHY); `detail` says what it found."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail


def classify(latency_ms: float) -> HealthStatus:
    if latency_ms <= HEALTHY_MS:
        return HealthStatus.HEALTHY
    if latency_ms <= DEGRADED_MS:
        return HealthStatus.DEGRADED
    return HealthStatus.UNHEALTHY


@dataclass
class ModuleHealth:
    """One module's health as of its last check."""

    name: str
    status: HealthStatus = HealthStatus.DISCONNECTED
    latency_ms: float | None = None
    last_check: float | None = None
    consecutive_failures: int = 0
    reconnects: int = 0
    last_error: str | None = None
    #: True while the reported status comes from a check that has not answered yet.
    pending: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # field by field: dataclasses.asdict's deep copy was about 5% of the idle pulse's CPU
        # (a check replaces `detail` whole, never changes it in place: a shallow copy will do)
        body = {name: getattr(self, name) for name in _MODULE_FIELDS}
        body["status"] = self.status.value
        body["detail"] = dict(self.detail)
        return body


_MODULE_FIELDS = tuple(f.name for f in fields(ModuleHealth))


@dataclass
class Probe:
    """A module's check (returns details, raises on failure) and its reconnect action."""

    name: str
    check: Callable[[], dict[str, Any]]
    reconnect: Callable[[], None] = lambda: None
    timeout: float | None = None  # unanswered this long: DISCONNECTED (default PROBE_TIMEOUT_S)
    #: Probes of one group run one after another in one thread, in the order given (each timed
    #: from the pulse's start, and recorded as soon as it answers): for checks of one resource,
    #: where a thread each costs more than the check. A member that hangs holds up only the
    #: members after it.
    group: str | None = None
    #: A check that does no I/O and cannot block (the paper exchange's clock): the pulse runs it
    #: itself, without a thread hand-off.
    inline: bool = False
    #: A check the pulse runs itself in two steps, for one that waits on another process's
    #: reply (the engine's pong): `start()` sends the request and returns `answer(timeout)`,
    #: which waits at most `timeout` seconds and returns the details once the reply is in
    #: (raising as `check` would), else None. One is in flight at a time: a reply not in by the
    #: end of a pulse's budget is looked for again by the next pulses (without waiting), and is
    #: then timed when that pulse finds it (at least as late as it was).
    start: Callable[[], Callable[[float], dict[str, Any] | None]] | None = None
    #: For a probe that runs alone: an answer the pulse can give itself, without I/O that could
    #: block (an SQLite file unchanged since it was last read), or None when `check` must run
    #: (in its thread, as usual). Raising counts as None.
    quick: Callable[[], dict[str, Any] | None] | None = None


@dataclass(frozen=True)
class _Outcome:
    """What one check returned or raised, and when it finished (perf_counter)."""

    detail: dict[str, Any] | None
    error: Exception | None
    finished: float


@dataclass
class _Started:
    """A two-step check in flight (`Probe.start`): how to look for its answer, and when the
    pulse that started it began (perf_counter)."""

    answer: Callable[[float], dict[str, Any] | None]
    started: float


@dataclass
class _Flight:
    """A run of checks in flight, when it started (perf_counter), the outcomes of its checks
    so far (in order, appended as each answers) and how many of them a pulse has recorded."""

    future: concurrent.futures.Future[None]
    started: float
    outcomes: list[_Outcome]
    recorded: int = 0


def _check(check: Callable[[], dict[str, Any]]) -> _Outcome:
    try:
        detail = check()
    except Exception as exc:  # every failure is a value the pulse classifies
        return _Outcome(None, exc, time.perf_counter())
    return _Outcome(detail, None, time.perf_counter())


def _quick(probe: Probe) -> _Outcome | None:
    """The probe's quick answer, if it has one now."""
    if probe.quick is None:
        return None
    try:
        detail = probe.quick()
    except Exception:  # the full check will say what is wrong
        return None
    return None if detail is None else _Outcome(detail, None, time.perf_counter())


def _run(checks: list[Callable[[], dict[str, Any]]], outcomes: list[_Outcome]) -> None:
    for check in checks:
        outcomes.append(_check(check))  # a pulse may read it while the next check runs


class HealthMonitor:
    """Runs the probes concurrently, each with its own time limit, and keeps per-module health.

    `timeout` is the default per-probe limit before DISCONNECTED; `budget` is how long one
    `check_all()` waits for answers.
    """

    def __init__(
        self, probes: list[Probe], timeout: float = PROBE_TIMEOUT_S, budget: float = PULSE_BUDGET_S
    ) -> None:
        self.probes = {probe.name: probe for probe in probes}
        self.timeout = timeout
        self.budget = budget
        self.modules = {name: ModuleHealth(name) for name in self.probes}
        self._next_reconnect: dict[str, float] = {}
        self._backoff_step: dict[str, int] = {}  # back to 0 once the module is HEALTHY
        # the probes run together (a group, or one probe alone), by their first probe's name
        self._runs: dict[str, list[Probe]] = {}
        self._inline = [probe for probe in probes if probe.inline and probe.start is None]
        self._two_step = [probe for probe in probes if probe.start is not None]
        self._started: dict[str, _Started] = {}
        for probe in probes:
            if not probe.inline and probe.start is None:
                self._runs.setdefault(f"group:{probe.group}" if probe.group else probe.name, []).append(probe)
        self._in_flight: dict[str, _Flight] = {}
        # one thread per run: each run has at most one check in flight, so none waits
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, len(self._runs)), thread_name_prefix="hean-probe"
        )
        self._lock = threading.Lock()

    def get_health_status(self) -> dict[str, Any]:
        """Overall status and every module's health (the original docs' call)."""
        modules = {name: module.to_dict() for name, module in self.modules.items()}
        return {"overall": overall(self.modules.values()).value, "modules": modules}

    def check_all(self) -> dict[str, Any] | None:
        """Probe every module now (waiting at most `budget`); None if a pulse is running."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            started = time.perf_counter()
            deadline = started + self.budget
            for probe in self._two_step:  # first: their replies come while the rest runs
                if probe.name not in self._started:
                    assert probe.start is not None
                    try:
                        self._started[probe.name] = _Started(probe.start(), started)
                    except Exception as exc:  # not even sent: a failed check
                        failed = _Outcome(None, exc, time.perf_counter())
                        self._record(self.modules[probe.name], failed, started)
            for run, probes in self._runs.items():
                if run not in self._in_flight:
                    if len(probes) == 1 and (answer := _quick(probes[0])) is not None:
                        self._record(self.modules[probes[0].name], answer, started)
                        continue
                    outcomes: list[_Outcome] = []
                    future = self._executor.submit(_run, [probe.check for probe in probes], outcomes)
                    self._in_flight[run] = _Flight(future, started, outcomes)
            # each inline run timed from its own start (a group's from its first member's): one
            # that waits does not make the next look slow
            run_started, group = started, None
            for probe in self._inline:
                if probe.group is None or probe.group != group:
                    run_started, group = time.perf_counter(), probe.group
                self._record(self.modules[probe.name], _check(probe.check), run_started)
            for name, pending in list(self._started.items()):
                try:
                    detail = pending.answer(max(0.0, deadline - time.perf_counter()))
                except Exception as exc:
                    outcome: _Outcome | None = _Outcome(None, exc, time.perf_counter())
                else:
                    outcome = None if detail is None else _Outcome(detail, None, time.perf_counter())
                if outcome is not None:
                    del self._started[name]
                    self._record(self.modules[name], outcome, pending.started)
            flights = [flight.future for flight in self._in_flight.values()]
            if flights:
                concurrent.futures.wait(flights, timeout=max(0.0, deadline - time.perf_counter()))
            now = time.perf_counter()
            for name, pending in self._started.items():
                self._record_waiting(self.modules[name], self.probes[name], now - pending.started)
            for run, probes in self._runs.items():
                flight = self._in_flight.get(run)
                if flight is None:  # answered quickly, recorded above
                    continue
                done = flight.future.done()  # before counting: a finished run has every outcome
                answered = len(flight.outcomes)
                for index in range(flight.recorded, answered):
                    self._record(self.modules[probes[index].name], flight.outcomes[index], flight.started)
                flight.recorded = answered
                for probe in probes[answered:]:
                    self._record_waiting(self.modules[probe.name], probe, now - flight.started)
                if done:
                    del self._in_flight[run]
            return self.get_health_status()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the probe threads (checks in flight finish on their own)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _record(self, module: ModuleHealth, outcome: _Outcome, started: float) -> None:
        module.last_check = time.time()
        module.pending = False
        latency_ms = round((outcome.finished - started) * 1000.0, 3)
        error = outcome.error
        if error is not None and getattr(error, "detail", None) is not None:
            module.detail = error.detail  # type: ignore[attr-defined]  # checked by getattr just above
        if error is None:
            module.detail = outcome.detail or {}
            module.latency_ms = latency_ms
            module.status = classify(latency_ms)
            module.consecutive_failures = 0
            module.last_error = None
            if module.status is HealthStatus.HEALTHY:
                self._backoff_step[module.name] = 0
        elif isinstance(error, Unreachable):
            module.latency_ms = None
            module.status = HealthStatus.DISCONNECTED
            module.consecutive_failures += 1
            module.last_error = str(error)[:300]
        else:
            module.latency_ms = latency_ms
            module.status = HealthStatus.UNHEALTHY
            module.consecutive_failures += 1
            reason = str(error) if isinstance(error, ModuleFault) else f"{type(error).__name__}: {error}"
            module.last_error = reason[:300]
        self._apply_policy(module)

    def _record_waiting(self, module: ModuleHealth, probe: Probe, waited_s: float) -> None:
        """A check that has not answered yet: its module is at least as bad as the wait."""
        module.last_check = time.time()
        module.pending = True
        waited_ms = round(waited_s * 1000.0, 3)
        limit = probe.timeout or self.timeout
        if waited_s > limit:
            module.status = HealthStatus.DISCONNECTED
            module.latency_ms = None
            module.last_error = f"no answer within {limit * 1000:.0f} ms"
            module.consecutive_failures += 1
        else:
            module.status = classify(waited_ms)
            module.latency_ms = waited_ms
            if module.status is HealthStatus.UNHEALTHY:
                module.last_error = f"no answer after {waited_ms:.0f} ms"
                module.consecutive_failures += 1
        self._apply_policy(module)

    def _apply_policy(self, module: ModuleHealth) -> None:
        """Reconnect a module slower than HEALTHY_MS or failing 3 times in a row."""
        slow = module.latency_ms is not None and module.latency_ms > HEALTHY_MS
        if slow or module.consecutive_failures >= FAILURES_BEFORE_RECONNECT:
            self._maybe_reconnect(module)

    def _maybe_reconnect(self, module: ModuleHealth) -> None:
        now = time.monotonic()
        if now < self._next_reconnect.get(module.name, 0.0):
            return
        step = self._backoff_step.get(module.name, 0)
        self._next_reconnect[module.name] = now + RECONNECT_BACKOFF_S[step]
        self._backoff_step[module.name] = min(step + 1, len(RECONNECT_BACKOFF_S) - 1)
        module.reconnects += 1
        try:
            self.probes[module.name].reconnect()
            log.warning(
                "event=module_reconnect module=%s reconnects=%d status=%s latency_ms=%s failures=%d",
                module.name,
                module.reconnects,
                module.status.value,
                module.latency_ms,
                module.consecutive_failures,
            )
        except Exception as exc:
            log.error("event=module_reconnect_failed module=%s error=%s", module.name, exc)


def overall(modules: Any) -> HealthStatus:
    """The worst status among modules (DISCONNECTED counts as worst)."""
    order = [HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY, HealthStatus.DISCONNECTED]
    worst = HealthStatus.HEALTHY
    for module in modules:
        status = module.status if isinstance(module, ModuleHealth) else HealthStatus(module["status"])
        worst = max(worst, status, key=order.index)
    return worst


#: A pulse (or a pulse node's report) older than this many periods is stale.
STALE_PERIODS = 3
#: Every pulse worker (node) reports here each period: health/nodes = {node: {at, overall}}.
NODES_KEY = "nodes"
#: A pulse node silent this long (stopped, killed, renamed) is dropped from health/nodes;
#: until then the aggregate view shows it DISCONNECTED with the age of its last report.
NODE_RETENTION_S = 600.0
#: How often `store_pulse` looks again when another node stored a pulse in between.
STORE_ATTEMPTS = 8


class PublishedHealth:
    """The last pulse as stored on the state bus: what `get_health_monitor()` returns.

    `get_health_status()` adds `age_ms` (how old the pulse is) and `stale` (older than
    STALE_PERIODS periods: the pulse has stopped, so the statuses are out of date).
    """

    def __init__(self, summary: dict[str, Any] | None, published_at: float) -> None:
        self._summary = summary or {"overall": HealthStatus.DISCONNECTED.value, "modules": {}}
        self.published_at = published_at

    def get_health_status(self) -> dict[str, Any]:
        if not self.published_at:
            return dict(self._summary, age_ms=None, stale=True)
        age_s = time.time() - self.published_at
        period_s = float(self._summary.get("period_s") or 0.1)
        return dict(self._summary, age_ms=round(age_s * 1000.0, 1), stale=age_s > STALE_PERIODS * period_s)


def nodes_view(
    nodes: dict[str, Any] | None,
    period_s: float,
    now: float | None = None,
    retention_s: float = NODE_RETENTION_S,
) -> dict[str, Any]:
    """Every pulse node with its report's age; DISCONNECTED once silent for STALE_PERIODS, and
    left out once silent for longer than `retention_s` (even if no node has pruned it yet)."""
    now = time.time() if now is None else now
    view = {}
    for node, report in sorted((nodes or {}).items()):
        age_s = now - float(report["at"])
        if age_s > retention_s:
            continue
        silent = age_s > STALE_PERIODS * period_s
        view[node] = {
            "status": HealthStatus.DISCONNECTED.value if silent else report.get("overall", "HEALTHY"),
            "age_ms": round(age_s * 1000.0, 1),
        }
    return view


def _node_report(node: str, seen: str, now: float) -> StateOp:
    from hean.core.system.redis_state import StateOp

    return StateOp.merge(NODES_KEY, {node: {"at": now, "overall": seen}}, namespace=HEALTH_NAMESPACE)


def _prune_nodes(
    manager: SyncRedisStateManager, nodes: StateItem, now: float, retention_s: float
) -> list[str]:
    """Drop the nodes of `nodes` (as just merged) silent for longer than `retention_s`."""
    from hean.core.system.redis_state import VersionMismatchError

    expired = [name for name, report in nodes.value.items() if now - float(report["at"]) > retention_s]
    if not expired:
        return []
    kept = {name: report for name, report in nodes.value.items() if name not in expired}
    try:
        manager.compare_and_set(NODES_KEY, kept, nodes.version, namespace=HEALTH_NAMESPACE)
    except VersionMismatchError:
        return []
    log.info("event=pulse_nodes_pruned nodes=%s retention_s=%s", ",".join(expired), retention_s)
    return expired


def report_node(
    manager: SyncRedisStateManager, node: str, seen: str, retention_s: float = NODE_RETENTION_S
) -> list[str]:
    """Record that pulse node `node` is alive and saw `seen` overall; drop every node silent for
    longer than `retention_s`. Returns the nodes dropped.

    The report is a server-side merge (nodes never overwrite each other's entries); the drop is
    a compare-and-set on the version that merge returned, so it costs nothing while no node is
    that old, and a report that lands in between only postpones the drop to the next period.
    """
    now = time.time()
    (item,) = manager.batch_update([_node_report(node, seen, now)])
    return _prune_nodes(manager, item, now, retention_s)


@dataclass
class StoredPulse:
    """The pulse this node stored last: its summary's version and its `at`; and per module, its
    status as this node last wrote the module's key, and when (time.monotonic())."""

    version: int = 0
    at: float = 0.0
    modules: dict[str, tuple[tuple[Any, ...], float]] = field(default_factory=dict)


#: With `last`, a module's own key is rewritten at once when its status, error or pending flag
#: changes, and otherwise once every MODULE_REFRESH_S (its latency and last check then at most
#: that old): the summary, written every pulse, carries every module anyway, and it is what the
#: REST views and the dashboard read. Six module keys ten times a second were most of an idle
#: pulse's Redis work: the script, its record in the append-only file, six publishes.
MODULE_REFRESH_S = 1.0


def _module_status(module: dict[str, Any]) -> tuple[Any, ...]:
    return module.get("status"), module.get("last_error"), module.get("pending")


def store_pulse(
    manager: SyncRedisStateManager,
    status: dict[str, Any],
    node: str | None = None,
    retention_s: float = NODE_RETENTION_S,
    last: StoredPulse | None = None,
) -> bool:
    """Store a pulse (the summary and one key per module: with `last`, only the modules due,
    see MODULE_REFRESH_S) unless a newer one is stored already.

    Pulse nodes share the summary, and a slow node can finish an older pulse after a faster
    node stored a newer one. So the write is a compare-and-set on the summary's version, made
    only while the stored pulse began (`at`) before this one; summary and modules change
    together or not at all. Returns False (nothing written) when a newer pulse is there.

    With `node`, the same write is that node's report (`report_node`, with the pulse's overall
    status as what it saw): one round trip for both. With `last` (what this node stored last,
    updated here), the first attempt skips the read: while the stored summary is still at that
    version it is this node's own older pulse, and a newer node's pulse fails the compare.

    A stored `at` more than STALE_PERIODS periods ahead of this node's clock cannot be a pulse
    from a node whose clock agrees with ours (a clock stepped back): it is replaced, so one
    wrong clock cannot freeze the pulse.
    """
    from hean.core.system.redis_state import StateOp, VersionMismatchError

    at = float(status["at"])
    horizon_s = STALE_PERIODS * float(status.get("period_s") or 0.1)
    moment = time.monotonic()
    written = {} if last is None else last.modules
    due = {
        name: module
        for name, module in status["modules"].items()
        if name not in written
        or written[name][0] != _module_status(module)
        or moment - written[name][1] >= MODULE_REFRESH_S
    }
    modules = [StateOp.set(name, module, HEALTH_NAMESPACE) for name, module in due.items()]
    for attempt in range(STORE_ATTEMPTS):
        if attempt == 0 and last is not None and last.version and at > last.at:
            version = last.version  # compare with what this node stored last, without a read
        else:
            stored, version, _ = manager.get_state_versioned(SUMMARY_KEY, namespace=HEALTH_NAMESPACE)
            stored_at = stored.get("at") if isinstance(stored, dict) else None
            if stored_at is not None and at <= float(stored_at) <= time.time() + horizon_s:
                return False
        summary = StateOp.set(SUMMARY_KEY, status, HEALTH_NAMESPACE, expected_version=version)
        now = time.time()
        report = [] if node is None else [_node_report(node, str(status["overall"]), now)]
        try:
            items = manager.batch_update([summary, *modules, *report])
        except VersionMismatchError:
            continue  # another node stored a pulse in between: compare with that one
        if last is not None:
            last.version, last.at = items[0].version, at
            for name, module in due.items():
                last.modules[name] = (_module_status(module), moment)
        if node is not None:
            _prune_nodes(manager, items[-1], now, retention_s)
        return True
    return False


async def get_health_monitor(url: str | None = None) -> PublishedHealth:
    """The system's health as the pulse worker last measured it (async, as the docs show)."""
    from hean.core.system.redis_state import get_redis_state_manager

    manager = await get_redis_state_manager(url)
    summary, _, published_at = await manager.get_state_versioned(SUMMARY_KEY, namespace=HEALTH_NAMESPACE)
    return PublishedHealth(summary, published_at)


def get_sync_health(url: str | None = None) -> PublishedHealth:
    """Sync face of `get_health_monitor` (eventlet handlers, Celery tasks)."""
    from hean.core.system.redis_state import get_sync_state_manager

    summary, _, published_at = get_sync_state_manager(url).get_state_versioned(
        SUMMARY_KEY, namespace=HEALTH_NAMESPACE
    )
    return PublishedHealth(summary, published_at)
