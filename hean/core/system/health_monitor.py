"""The Pulse: real probes of every module, classified by latency, with a reconnect policy.

The original docs' API works as written::

    from hean.core.system.health_monitor import get_health_monitor
    monitor = await get_health_monitor(); status = monitor.get_health_status()

`get_health_monitor()` loads the last pulse from the state bus (namespace ``health``), so a
script sees what the pulse worker measured; `HealthMonitor.check_all()` (sync) probes now and
is what the 100 ms pulse task runs. Classification: HEALTHY <= 50 ms, DEGRADED <= 200 ms,
UNHEALTHY slower or on an error, DISCONNECTED when the module cannot be reached. A module
slower than 50 ms, or failing 3 times in a row, has its `reconnect()` called (with backoff).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

HEALTHY_MS = 50.0
DEGRADED_MS = 200.0
FAILURES_BEFORE_RECONNECT = 3
#: A probe that has not answered by then counts as unreachable for this pulse (long enough to
#: tell DEGRADED from UNHEALTHY; a pulse waits for its slowest probe and skips the beats that
#: arrive meanwhile, so pulses never pile up).
PROBE_TIMEOUT_S = 0.25
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
    """The module could not be reached at all (as opposed to answering badly)."""


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
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["status"] = self.status.value
        return body


@dataclass
class Probe:
    """A module's check (returns details, raises on failure) and its reconnect action."""

    name: str
    check: Callable[[], dict[str, Any]]
    reconnect: Callable[[], None] = lambda: None
    timeout: float | None = None  # this probe's own limit, if shorter than the monitor's


class HealthMonitor:
    """Runs the probes concurrently, each bounded by `timeout`, and keeps per-module health."""

    def __init__(self, probes: list[Probe], timeout: float = PROBE_TIMEOUT_S) -> None:
        self.probes = {probe.name: probe for probe in probes}
        self.timeout = timeout
        self.modules = {name: ModuleHealth(name) for name in self.probes}
        self._next_reconnect: dict[str, float] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2 * max(1, len(probes)))
        self._lock = threading.Lock()

    def get_health_status(self) -> dict[str, Any]:
        """Overall status and every module's health (the original docs' call)."""
        modules = {name: module.to_dict() for name, module in self.modules.items()}
        return {"overall": overall(self.modules.values()).value, "modules": modules}

    def check_all(self) -> dict[str, Any] | None:
        """Probe every module now; None if a pulse is already running (pulses never pile up)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            started = time.perf_counter()
            futures = {name: self._executor.submit(probe.check) for name, probe in self.probes.items()}
            for name, future in futures.items():
                limit = min(self.timeout, self.probes[name].timeout or self.timeout)
                self._record(name, future, started, limit, max(0.0, started + limit - time.perf_counter()))
            return self.get_health_status()
        finally:
            self._lock.release()

    def _record(
        self,
        name: str,
        future: concurrent.futures.Future[dict[str, Any]],
        started: float,
        limit: float,
        wait: float,
    ) -> None:
        module = self.modules[name]
        module.last_check = time.time()
        try:
            module.detail = future.result(timeout=wait)
            module.latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
            module.status = classify(module.latency_ms)
            module.consecutive_failures = 0
            module.last_error = None
        except concurrent.futures.TimeoutError:
            module.latency_ms = None
            module.status = HealthStatus.DISCONNECTED
            module.consecutive_failures += 1
            module.last_error = f"no answer within {limit * 1000:.0f} ms"
        except Unreachable as exc:
            module.latency_ms = None
            module.status = HealthStatus.DISCONNECTED
            module.consecutive_failures += 1
            module.last_error = str(exc)[:300]
        except Exception as exc:
            module.latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
            module.status = HealthStatus.UNHEALTHY
            module.consecutive_failures += 1
            module.last_error = f"{type(exc).__name__}: {exc}"[:300]
        slow = module.latency_ms is not None and module.latency_ms > HEALTHY_MS
        if slow or module.consecutive_failures >= FAILURES_BEFORE_RECONNECT:
            self._maybe_reconnect(module)

    def _maybe_reconnect(self, module: ModuleHealth) -> None:
        now = time.monotonic()
        if now < self._next_reconnect.get(module.name, 0.0):
            return
        delay = RECONNECT_BACKOFF_S[min(module.reconnects, len(RECONNECT_BACKOFF_S) - 1)]
        self._next_reconnect[module.name] = now + delay
        module.reconnects += 1
        try:
            self.probes[module.name].reconnect()
            log.warning("event=module_reconnect module=%s reconnects=%d", module.name, module.reconnects)
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


class PublishedHealth:
    """The last pulse as stored on the state bus: what `get_health_monitor()` returns."""

    def __init__(self, summary: dict[str, Any] | None, published_at: float) -> None:
        self._summary = summary or {"overall": HealthStatus.DISCONNECTED.value, "modules": {}}
        self.published_at = published_at

    def get_health_status(self) -> dict[str, Any]:
        age = round((time.time() - self.published_at) * 1000.0, 1) if self.published_at else None
        return dict(self._summary, age_ms=age)


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
