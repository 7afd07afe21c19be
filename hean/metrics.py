"""Prometheus metrics of every HEAN process, and the web process's view of them at `/metrics`.

The web process, the workers and beat write their series with prometheus_client; with
`PROMETHEUS_MULTIPROC_DIR` set (`hean up` sets it to `$HEAN_HOME/metrics` and wipes it at each
start) they write to files there, which `/metrics` in the web process merges (prometheus_client's
multiprocess mode: custom collectors and `Gauge.set_function` do not work across processes, so
everything a worker knows is a plain counter, histogram or gauge written when it happens).
Values only the present can tell (queue depths, the engine log's length) are read from Redis
when `/metrics` is scraped, by `SystemCollector` in the web process.

Instrumented code calls one function here per batch (never a call per order): counts go up
with `.inc(n)`, and latencies are observed once per batch.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hean.redis_client import oldest_entry_age_s

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


#: This host's name as the metrics files carry it, read once: prometheus_client asks for the
#: identifier at every value it writes (to notice a fork), which asked the kernel for the
#: hostname each time (about 0.35 us of 0.6), and a hostname changed under a running process
#: would have looked like a fork and reset its values.
_HOST = socket.gethostname().replace("_", "-")


_identifier = ""


def _name_this_process() -> None:
    """Host and pid: containers sharing one metrics volume (docker-compose.yml) reuse pids. Set
    at import and again in every forked child (os.register_at_fork), so asking is a read: the
    pid was a system call at every value written (about 1.8 us on this VM, 4-7% of the engine
    worker's Python time at 1,000 single orders/s), and prometheus_client still sees a fork."""
    global _identifier
    _identifier = f"{_HOST}-{os.getpid()}"


_name_this_process()
os.register_at_fork(after_in_child=_name_this_process)


def _process_identifier() -> str:
    return _identifier


if os.environ.get(MULTIPROC_ENV):
    # before any metric exists: each process's files are named by this identifier
    values.ValueClass = values.MultiProcessValue(_process_identifier)
#: Seconds: command latencies from a fraction of a millisecond to tens of seconds under overload.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The order of the pulse statuses as gauge values (hean_pulse_status).
STATUS_VALUES = {"HEALTHY": 0, "DEGRADED": 1, "UNHEALTHY": 2, "DISCONNECTED": 3}

ORDERS = Counter("hean_orders", "Orders the engine applied, by outcome.", ["status"])
FILLS = Counter("hean_fills", "Fills: orders filled on submission and resting orders filled by the market.")
REJECTS = Counter("hean_order_rejects", "Orders the engine rejected, by reason.", ["reason"])
COMMANDS = Counter(
    "hean_commands", "Commands run by the workers, by name and result code.", ["command", "code"]
)
ENGINE_BATCHES = Counter(
    "hean_engine_batches",
    "Batches the engine worker ran, by how it got them: delivered by Celery, taken along by the "
    "previous batch's commit, or taken after the linger when the commit found none waiting.",
    ["source"],
)
ENQUEUED = Counter("hean_commands_enqueued", "Commands the web process enqueued, by queue.", ["queue"])
REFUSED = Counter(
    "hean_commands_refused",
    "Commands the web process refused (acked with accepted: false), by reason: the error code of "
    "a command refused at the edge, or for `unavailable` what was wanting (redis, redis_memory, "
    "history, not_durable, enqueue_timeout, internal).",
    ["reason"],
)
ACK = Histogram(
    "hean_ack_seconds",
    "Receive-to-ack time in the web process; one observation per enqueue batch (its oldest command).",
    buckets=LATENCY_BUCKETS,
)
SUBMIT_TO_RESULT = Histogram(
    "hean_submit_to_result_seconds",
    "Receive-to-result time of a worker batch's oldest command (one observation per batch), by queue.",
    ["queue"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "hean_batch_commands",
    "Commands per worker batch, by queue.",
    ["queue"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
PULSE_STATUS = Gauge(
    "hean_pulse_status",
    "Each module's status in the last pulse: 0 HEALTHY, 1 DEGRADED, 2 UNHEALTHY, 3 DISCONNECTED.",
    ["module"],
    multiprocess_mode="mostrecent",
)
PULSE_LATENCY = Gauge(
    "hean_pulse_latency_seconds",
    "Each module's probe latency in the last pulse.",
    ["module"],
    multiprocess_mode="mostrecent",
)
PULSES = Counter("hean_pulses", "Pulses stored, by overall status.", ["overall"])
STATE_UPDATES = Counter("hean_state_updates", "State bus writes (each one atomic batch of operations).")
UNJOURNALED_ACKS = Gauge(
    "hean_unjournaled_acks",
    "Acks the web process sent that are not in the command journal yet.",
    multiprocess_mode="livesum",
)
HISTORY_ROWS = Counter(
    "hean_history_rows", "Rows the history writer wrote to the database, by table.", ["table"]
)
HISTORY_PRUNED = Counter(
    "hean_history_pruned_rows",
    "Rows the history's retention (HEAN_HISTORY_KEEP_DAYS) deleted from the database, by table.",
    ["table"],
)
LLM_CALLS = Counter(
    "hean_llm_calls",
    "Calls to the LLM provider, by provider, model and outcome.",
    ["provider", "model", "outcome"],
)
LLM_TOKENS = Counter(
    "hean_llm_tokens", "LLM tokens, by provider, model and direction.", ["provider", "model", "direction"]
)
LLM_COST = Counter(
    "hean_llm_cost_usd", "Estimated LLM cost in US dollars, by provider and model.", ["provider", "model"]
)


def multiprocess_dir() -> str | None:
    """The shared metrics directory, if this process writes there."""
    return os.environ.get(MULTIPROC_ENV) or None


# -- instrumentation: one call per batch --------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: prometheus_client checks and converts the values
    and takes a lock at each call (about 0.9 us; a batch makes several). Label values here come
    from small sets (queues, commands, codes, statuses, reasons)."""
    return metric.labels(*labels)


def enqueued(queue: str, count: int, oldest_started: float) -> None:
    """The web process enqueued `count` commands for `queue`; the oldest was received at
    `oldest_started` (time.perf_counter())."""
    _child(ENQUEUED, queue).inc(count)
    ACK.observe(time.perf_counter() - oldest_started)


def refused(reason: str) -> None:
    """The web process refused a command (see REFUSED for the reasons)."""
    _child(REFUSED, reason).inc()


def unjournaled(count: int) -> None:
    UNJOURNALED_ACKS.set(count)


def history_written(commands: int, orders: int, fills: int) -> None:
    """The history writer committed a batch: its rows per table."""
    for table, count in (("commands", commands), ("orders", orders), ("fills", fills)):
        if count:
            HISTORY_ROWS.labels(table).inc(count)


def history_pruned(counts: Mapping[str, int]) -> None:
    """The history's retention deleted rows: their number per table."""
    for table, count in counts.items():
        if count:
            HISTORY_PRUNED.labels(table).inc(count)


def batch_ran(queue: str, received_at_ms: Iterable[float], results: Sequence[dict[str, Any]]) -> None:
    """A worker batch's results were published: commands by name and code, and the oldest
    command's receive-to-result time."""
    oldest = min(received_at_ms, default=None)
    if oldest is not None:
        _child(SUBMIT_TO_RESULT, queue).observe(max(0.0, time.time() - oldest / 1000.0))
    _child(BATCH_SIZE, queue).observe(len(results))
    tally = Tally((r["command"], r["error"]["code"] if r["error"] else "ok") for r in results)
    for (command, code), count in tally.items():
        _child(COMMANDS, command, code).inc(count)


def engine_batch(source: str) -> None:
    """The engine worker ran a batch it got from `source`: delivered, taken_along, after_linger."""
    _child(ENGINE_BATCHES, source).inc()


def engine_outcome(outcome: Any) -> None:
    """Count what one engine call did: an OrderResult, a BatchResult (counted from its totals
    and its reason column, in C), or a MarketUpdateResult (its fills)."""
    if hasattr(outcome, "reasons"):  # BatchResult
        for status, count in (
            ("FILLED", outcome.filled),
            ("RESTING", outcome.resting),
            ("EXPIRED", outcome.expired),
            ("REJECTED", outcome.rejected),
        ):
            if count:
                _child(ORDERS, status).inc(count)
        FILLS.inc(outcome.filled)
        if outcome.rejected:
            names = _reason_names()
            for code, count in Tally(bytes(outcome.reasons)).items():  # counted in C
                if code in names:
                    _child(REJECTS, names[code]).inc(count)
    elif hasattr(outcome, "reject_reason"):  # OrderResult
        _child(ORDERS, str(outcome.status)).inc()
        if outcome.reject_reason is not None:
            _child(REJECTS, str(outcome.reject_reason)).inc()
        elif str(outcome.status) == "FILLED":
            FILLS.inc()
    elif hasattr(outcome, "fills") and outcome.fills:  # MarketUpdateResult
        FILLS.inc(len(outcome.fills))


@functools.cache
def _reason_names() -> dict[int, str]:
    """The core's reject reason codes (the byte column of a batch result) and their names."""
    from hean import _core

    return {int(v): name for name, v in _core.RejectReason.__members__.items() if name != "NONE"}


def pulse_stored(status: dict[str, Any]) -> None:
    """A pulse was stored: each module's status and latency."""
    PULSES.labels(str(status.get("overall"))).inc()
    for name, module in (status.get("modules") or {}).items():
        PULSE_STATUS.labels(name).set(STATUS_VALUES.get(module.get("status"), 3))
        latency = module.get("latency_ms")
        if latency is not None:
            PULSE_LATENCY.labels(name).set(latency / 1000.0)


def llm_call(
    provider: str,
    model: str,
    outcome: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
) -> None:
    """One LLM call (for the error analyzer): its outcome, tokens and estimated cost."""
    LLM_CALLS.labels(provider, model, outcome).inc()
    if input_tokens:
        LLM_TOKENS.labels(provider, model, "input").inc(input_tokens)
    if output_tokens:
        LLM_TOKENS.labels(provider, model, "output").inc(output_tokens)
    if cost_usd:
        LLM_COST.labels(provider, model).inc(cost_usd)


# -- the scrape ---------------------------------------------------------------------------------


class SystemCollector(Collector):
    """Read at scrape time in the web process: each queue's depth and the engine's log.

    `queues` are the Celery queue names (kombu's Redis transport keeps each as a list);
    `lists` and `streams` name other Redis lists and streams to report by length; `history`
    is the stream the history writer drains: the age of its oldest entry is how far the
    database lags behind (0 when it has everything), read here so a dead writer shows.
    With `memory_reserve` (the web's reserve key), Redis's memory too: used, its maxmemory
    (0: none) and the reserve's bytes, what an alert on a filling Redis watches.
    """

    def __init__(
        self,
        client: Any,
        queues: Sequence[str],
        lists: dict[str, str] | None = None,
        streams: dict[str, str] | None = None,
        history: str | None = None,
        memory_reserve: str | None = None,
    ) -> None:
        self.client, self.queues = client, list(queues)
        self.lists, self.streams = lists or {}, streams or {}
        self.history, self.memory_reserve = history, memory_reserve

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "hean_queue_depth", "Messages waiting on each Celery queue.", labels=["queue"]
        )
        lengths = GaugeMetricFamily(
            "hean_redis_length", "Length of HEAN's Redis lists and streams.", labels=["key"]
        )
        up = GaugeMetricFamily("hean_redis_up", "1 when the scrape could read Redis.")
        lag = GaugeMetricFamily(
            "hean_history_lag_seconds",
            "Age of the oldest command, ack or result not yet in the database (0: all written).",
        )
        memory = GaugeMetricFamily(
            "hean_redis_memory_bytes",
            "Redis's memory: used, its maxmemory (0: no limit), and the web's reserve for a kill "
            "switch that meets a full Redis.",
            labels=["kind"],
        )
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(queue)
            for key in self.lists.values():
                pipe.llen(key)
            for key in self.streams.values():
                pipe.xlen(key)
            if self.history:
                pipe.xrange(self.history, count=1)
            if self.memory_reserve:
                pipe.info("memory")
                pipe.strlen(self.memory_reserve)
            values = pipe.execute(raise_on_error=False)
            if self.memory_reserve:
                reserve, info = values.pop(), values.pop()
                if isinstance(info, dict) and isinstance(reserve, int):  # INFO may be refused
                    memory.add_metric(["used"], int(info.get("used_memory", 0)))
                    memory.add_metric(["maxmemory"], int(info.get("maxmemory", 0)))
                    memory.add_metric(["reserve"], reserve)
            if error := next((v for v in values if isinstance(v, Exception)), None):
                raise error
            if self.history:
                lag.add_metric([], oldest_entry_age_s(values.pop(), time.time()))
        except Exception:  # Redis away: say so, never fail the scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        if memory.samples:
            yield memory
        for queue, value in zip(self.queues, values, strict=False):
            depth.add_metric([queue], value)
        for name, value in zip([*self.lists, *self.streams], values[len(self.queues) :], strict=True):
            lengths.add_metric([name], value)
        yield from (up, depth, lengths)
        if self.history:
            yield lag


class _HeanSeries(Collector):
    """Every process's hean_* series from the multiprocess directory. Flower writes its own
    series there too (it inherits the directory); they are served by Flower's /metrics."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client import multiprocess

        for family in multiprocess.MultiProcessCollector(None).collect():
            if family.name.startswith("hean_"):
                yield family


def render(extra: Collector | None = None) -> bytes:
    """The text exposition of every process's series (multiprocess mode) or this process's,
    plus `extra`."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        registry.register(_HeanSeries())
        text = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        text = generate_latest(REGISTRY)  # this process's own series only
    if extra is not None:
        registry = CollectorRegistry()
        registry.register(extra)
        text += generate_latest(registry)
    return text


def reset_directory(path: os.PathLike[str] | str) -> None:
    """Empty (or create) the multiprocess directory: files of an earlier run's processes
    would otherwise be summed into this one's."""
    from pathlib import Path

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
