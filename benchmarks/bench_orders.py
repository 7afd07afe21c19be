"""Orders through the whole system, design against design, in one run (issue 14 item 6).

Designs, each on its own freshly started processes, in turn:
- echo floor, 1 order/event: a bare Flask-SocketIO echo handler (benchmarks/echo_server.py);
  its "result" is the echoed ack;
- echo floor, 100 orders/event: the same, the orders encoded back;
- echo after one Redis write, 1 order/event: the same handler, which first pushes the event onto
  a list in its private Redis (`appendfsync always`, as HEAN's) and answers once Redis confirmed
  it: what an ack sent after a durable write costs at the least, Redis's CPU included;
- echo after grouped Redis writes, 1 order/event: the events that wait share one write, as
  HEAN's command writer shares them (its group-commit linger), each acked after it: the least a
  durable ack costs with HEAN's batching;
- the pipeline's floor, 1 order/event: HEAN's shape with none of its safeguards
  (benchmarks/pipeline_floor.py): the echo after grouped writes, whose writes are a work list
  that a worker process takes, runs through the engine and commits with its results in one
  MULTI, publishing them to the web, which sends each to its sender;
- naive: a Flask-SocketIO handler calling ``apply_async`` per order, a Celery worker applying
  it to the engine and emitting the result through the Redis message queue
  (benchmarks/naive_orders.py), 1 order/event;
- HEAN, 1 order/event: single `submit_order` events (web + engine worker + history writer +
  Redis);
- HEAN, hean.client: single `submit_order()` calls through hean.client (coalescing on);
- HEAN, 100 orders/event: `submit_orders` commands.

For each design the offered rate ramps up (--rates-single / --rates-batched, each step
--step-seconds long, after a warm-up) until the results stop keeping up: a step is sustained
when the loader sent at the offered rate (>= 95%), every order was answered, and the last
result came within 1 s of the last send. Per design it prints: the highest sustained
orders/s; p50 / p99 submit-to-result at 1,000/s and at that highest rate; CPU ms per order per
process at 1,000/s (the loader included); memory growth over --memory-seconds at 1,000/s (RSS,
every process); and ratios to the naive design; then issue 14 item 3's bars beside this run's
figures, met or not. CPU seconds per order are the steady figure on this shared machine;
latencies are not. Never fails on speed.

For the HEAN designs it also splits the private Redis's CPU per order at 1,000/s into user and
system time, and puts beside it the cache flushes per order of the disk under its data (one
per fsync; every process's on that disk count) priced at what an append + fdatasync costs
there, measured before and after the designs (`hean.testing.disk`): under `appendfsync always`
Redis fsyncs once per event-loop turn that wrote, a share of its CPU that no change to HEAN's
Python removes, only fewer turns per order. It counts those turns too (Redis's INFO stats):
per order, each one's wall time, the part of it spent in commands, and Redis's CPU per turn.
A HEAN step's CPU is read once the history writer has written that step (at idle priority it
may finish seconds after the last result; how long is printed from half a second on), and
each HEAN design ends with the highest rate whose step the writer finished within 1 s.

    .venv/bin/python benchmarks/bench_orders.py [--step-seconds S] [--memory-seconds S]
                                                [--designs a,b,...] [--timeline]

``--timeline`` prints, for each step, every second's worst submit-to-result beside the steal
time the host took from the machine's CPUs in that second, to tell a stall of the system from
one of the machine (README: "Garbage collection, and the tail at 25,000 orders/s").
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import redis
from _harness import (
    REPO_ROOT,
    RawSocketIO,
    Stack,
    open_for_orders,
    percentile,
    print_table,
    wait_http,
)

from hean.gc_policy import freeze_startup_objects
from hean.redis_server import free_port
from hean.testing.disk import FsyncCost, disk_flushes, fsync_cost
from hean.testing.processes import cpu_seconds, rss
from hean.topology import HISTORY_STREAM_KEY

SYMBOL = "BTCUSDT"
KEEP_UP_S = 1.0
SENT_FRACTION = 0.95
WARMUP_S = 1.0
DRAIN_TIMEOUT_S = 30.0
REFERENCE_RATE = 1_000
REDIS_COMMANDS_SHOWN = 10


@dataclass(frozen=True)
class Design:
    key: str
    title: str
    # "echo", "echo-redis" (the echo after one Redis write), "echo-redis-grouped" (after a write
    # shared by the events that wait), "floor" (the pipeline's floor), "naive" or "hean"
    system: str
    per_event: int
    loader: str  # "raw" or "client"
    rates: str  # which ramp: "single" or "batched"


DESIGNS = (
    Design("echo1", "echo floor, 1 order/event", "echo", 1, "raw", "single"),
    Design("echo100", "echo floor, 100 orders/event", "echo", 100, "raw", "batched"),
    Design("echo1redis", "echo after a Redis write, 1/event", "echo-redis", 1, "raw", "single"),
    Design("echo1group", "echo after grouped writes, 1/event", "echo-redis-grouped", 1, "raw", "single"),
    Design("floor1", "floor: grouped write, worker, result", "floor", 1, "raw", "single"),
    Design("naive", "naive (apply_async per order)", "naive", 1, "raw", "single"),
    Design("hean1", "HEAN, 1 order/event", "hean", 1, "raw", "single"),
    Design("client", "HEAN, hean.client coalescing", "hean", 1, "client", "single"),
    Design("hean100", "HEAN, 100 orders/event", "hean", 100, "raw", "batched"),
)


def order_params(prefix: str, i: int) -> dict[str, Any]:
    return {
        "client_order_id": f"{prefix}-{i}",
        "symbol": SYMBOL,
        "side": "BUY" if i % 2 else "SELL",
        "quantity": "0.001",
    }


def command(prefix: str, i: int, per_event: int) -> dict[str, Any]:
    if per_event == 1:
        return {"command": "submit_order", "params": order_params(prefix, i), "request_id": f"{prefix}-{i}"}
    orders = [order_params(prefix, i * per_event + k) for k in range(per_event)]
    return {"command": "submit_orders", "params": {"orders": orders}, "request_id": f"{prefix}-b{i}"}


# ----------------------------------------------------------------------------- the loader


def _pace(rate_events: float, count: int, send: Any, deadline_s: float) -> int:
    """Call send(i) at its due time; stop early if more than `deadline_s` behind schedule."""
    started = time.perf_counter()
    for i in range(count):
        lag = time.perf_counter() - (started + i / rate_events)
        if lag < 0:
            time.sleep(-lag)
        elif lag > deadline_s:
            return i
        send(i)
    return count


def _run_raw(url: str, token: str, echo: bool, per_event: int, rate: float, seconds: float) -> dict[str, Any]:
    """Raw Socket.IO frames on one connection: a sending loop and a reading thread."""
    import json

    client = RawSocketIO(url, {"token": token})
    prefix = uuid.uuid4().hex[:8]
    events = max(1, int(rate * seconds / per_event))
    frames = [json.dumps(["command", command(prefix, i, per_event)]) for i in range(events)]
    ids = [f"{prefix}-{i}" if per_event == 1 else f"{prefix}-b{i}" for i in range(events)]
    index = {request_id: i for i, request_id in enumerate(ids)}
    sent_at = [0.0] * events
    remaining = [per_event] * events
    latencies: list[float] = []
    state = {"answered": 0, "refused": 0, "last": 0.0}
    expected = [events * per_event]
    all_in = threading.Event()

    def answer(i: int, orders: int, now: float) -> None:
        orders = min(orders, remaining[i])
        remaining[i] -= orders
        latencies.extend([(now - sent_at[i]) * 1000.0] * orders)
        state["answered"] += orders
        state["last"] = now
        if state["answered"] >= expected[0]:
            all_in.set()

    def read() -> None:
        try:
            while not all_in.is_set():
                kind, key, payload = client.recv()
                now = time.perf_counter()
                if kind == "ack":
                    i = int(key) - 1  # type: ignore[call-overload]  # ack ids are ints
                    accepted = isinstance(payload, dict) and payload.get("accepted", True) is not False
                    if echo or not accepted:
                        state["refused"] += 0 if accepted else per_event
                        answer(i, per_event, now)
                elif key == "command_result" and isinstance(payload, dict):
                    i = index.get(payload.get("request_id", ""), -1)
                    if i >= 0:
                        answer(i, int(payload.get("orders", per_event)), now)
        except Exception as exc:  # the connection closed: report what arrived
            state["error"] = f"{type(exc).__name__}: {exc}"
            all_in.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    cpu0 = time.process_time()

    def send(i: int) -> None:
        sent_at[i] = time.perf_counter()
        client.ws.send(f"42{i + 1}{frames[i]}")

    started = time.perf_counter()
    sent = _pace(events / seconds, events, send, KEEP_UP_S)
    send_done = time.perf_counter()
    expected[0] = sent * per_event
    if state["answered"] >= expected[0]:
        all_in.set()
    all_in.wait(DRAIN_TIMEOUT_S)
    cpu = time.process_time() - cpu0
    client.close()
    return {
        "offered": events * per_event,
        "sent": sent * per_event,
        "answered": state["answered"],
        "refused": state["refused"],
        "send_s": send_done - started,
        "lag_s": max(0.0, state["last"] - send_done),
        "lat": latencies,
        "cpu_s": cpu,
        "error": state.get("error"),
    }


def _run_client(url: str, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """hean.client, coalescing on: one `submit_order()` per order."""
    from hean.client import Client

    count = max(1, int(rate * seconds))
    latencies: list[float] = []
    state = {"answered": 0, "refused": 0, "last": 0.0}
    lock = threading.Lock()
    all_in = threading.Event()
    expected = [count]
    with Client(url, token) as client:
        cpu0 = time.process_time()

        def send(i: int) -> None:
            sent_at = time.perf_counter()
            handle = client.submit_order(SYMBOL, "BUY" if i % 2 else "SELL", "0.001")

            def done(future: Any, t: float = sent_at) -> None:
                now = time.perf_counter()
                with lock:
                    latencies.append((now - t) * 1000.0)
                    state["answered"] += 1
                    state["refused"] += 1 if future.exception() is not None else 0
                    state["last"] = now
                    if state["answered"] >= expected[0]:
                        all_in.set()

            handle.result.add_done_callback(done)

        started = time.perf_counter()
        sent = _pace(rate, count, send, KEEP_UP_S)
        send_done = time.perf_counter()
        with lock:
            expected[0] = sent
            if state["answered"] >= sent:
                all_in.set()
        all_in.wait(DRAIN_TIMEOUT_S)
        cpu = time.process_time() - cpu0
    return {
        "offered": count,
        "sent": sent,
        "answered": state["answered"],
        "refused": state["refused"],
        "send_s": send_done - started,
        "lag_s": max(0.0, state["last"] - send_done),
        "lat": latencies,
        "cpu_s": cpu,
        "error": None,
    }


def loader(url: str, token: str, design: Design, jobs: Any, out: Any) -> None:
    """Run each (rate, seconds) step when told to (a warm-up first); report each."""
    echo = design.system.startswith("echo")
    # the same for every design: a full collection of the loader's own imports (40 ms) would
    # show as the latency of whatever it was timing
    freeze_startup_objects("loader")
    try:
        while (step := jobs.get()) is not None:
            rate, seconds = step
            if design.loader == "client":
                result = _run_client(url, token, rate, seconds)
            else:
                result = _run_raw(url, token, echo, design.per_event, rate, seconds)
            out.put(result)
    except Exception as exc:  # never hang the benchmark
        out.put({"error": f"{type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------------- the systems


def start_system(design: Design) -> tuple[Stack, str, str]:
    """The processes of `design` (with their own private Redis); returns (stack, url, token)."""
    if design.system == "hean":
        # the history writer too: it copies every order into the database, as under `hean up`
        system = Stack(["worker-engine", "web", "history"], HEAN_COMMAND_RATE="1000000")
        open_for_orders(system, SYMBOL)
        return system, system.url, system.token
    system = Stack([])
    port = free_port()
    here = str(REPO_ROOT / "benchmarks")
    system.env["PYTHONPATH"] = os.pathsep.join([here, str(REPO_ROOT)])
    if design.system.startswith("echo"):
        # the echo that writes first uses the stack's private Redis (REDIS_URL in its environment)
        write = {"echo-redis": ["--redis"], "echo-redis-grouped": ["--redis-grouped"]}.get(design.system, [])
        system.spawn(
            "echo",
            [sys.executable, str(REPO_ROOT / "benchmarks" / "echo_server.py"), str(port), *write],
            pin_as="web",
        )
    elif design.system == "floor":
        script = str(REPO_ROOT / "benchmarks" / "pipeline_floor.py")
        system.spawn("floor-web", [sys.executable, script, "web", str(port)], pin_as="web")
        system.spawn("floor-worker", [sys.executable, script, "worker"], pin_as="worker-engine")
    else:
        system.spawn(
            "naive-web",
            [sys.executable, str(REPO_ROOT / "benchmarks" / "naive_orders.py"), "web", str(port)],
            pin_as="web",
        )
        system.spawn(
            "naive-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "naive_orders",
                "worker",
                "-P",
                "solo",
                "-Q",
                "naive",
                "-l",
                "warning",
            ],
            pin_as="worker-engine",
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/socket.io/?EIO=4&transport=polling")
    return system, url, ""


@dataclass
class Step:
    rate: float
    result: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # before, after
    redis: RedisUse | None = None  # the private Redis's CPU, commands and disk flushes
    history_behind_s: float = 0.0  # how long after the last result the history writer finished

    @property
    def sustained(self) -> bool:
        r = self.result
        return (
            not r.get("error")
            and r["sent"] >= SENT_FRACTION * r["offered"]
            and r["answered"] >= r["sent"]
            and r["lag_s"] <= KEEP_UP_S
        )

    def cpu_ms_per_order(self) -> dict[str, float]:
        answered = max(1, self.result.get("answered", 0))
        return {name: 1000.0 * seconds / answered for name, seconds in self.cpu.items()}


class StealSampler:
    """The machine's CPU times every 0.1 s in a thread, from creation until `stop()`."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # time, steal seconds, all seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            times = psutil.cpu_times()
            self.samples.append((time.monotonic(), getattr(times, "steal", 0.0), sum(times)))
            if self._done.wait(0.1):
                return

    def stop(self) -> list[tuple[float, float, float]]:
        self._done.set()
        self._thread.join()
        return self.samples


def print_timeline(lat: list[float], seconds: float, samples: list[tuple[float, float, float]]) -> None:
    """Each second of a step: the worst latency of the orders answered in that part of the
    step (orders are paced evenly, so their order is their time, to a few ms), and the steal
    time the host took from the machine's CPUs in it."""
    if not lat or len(samples) < 2:
        return
    start = samples[0][0]
    worst, stolen = [], []
    for second in range(max(1, round(seconds))):
        part = lat[int(second * len(lat) / seconds) : int((second + 1) * len(lat) / seconds)]
        worst.append(f"{max(part or [0.0]):.0f}")
        inside = [x for x in samples if second <= x[0] - start < second + 1] or samples[-1:]
        first, last = inside[0], inside[-1]
        stolen.append(f"{100 * (last[1] - first[1]) / max(1e-9, last[2] - first[2]):.0f}")
    print("    worst ms per second:   " + " ".join(f"{w:>4}" for w in worst))
    print("    steal % per second:    " + " ".join(f"{s:>4}" for s in stolen))


@dataclass(frozen=True)
class RedisUse:
    """What the private Redis did: user and system CPU seconds, the cache flushes of the disk
    under its data (None: not countable), per command (scripts' own calls included, as Redis
    counts them) its calls and microseconds, and its event loop's turns with their wall time,
    all of it and in commands (INFO stats `eventloop_*`; zeros from a server without them).
    Under `appendfsync always` every turn that wrote ends with one fsync."""

    user_s: float
    system_s: float
    flushes: int | None
    commands: dict[str, tuple[int, int]]
    turns: int = 0
    turn_us: int = 0
    turn_command_us: int = 0

    @staticmethod
    def sample(system: Stack) -> RedisUse | None:
        """So far (None: no private Redis, or it does not answer)."""
        pid = system.pids().get("redis")
        if pid is None:
            return None
        try:
            times = psutil.Process(pid).cpu_times()
            with redis.Redis.from_url(system.redis_url) as client:
                stats = client.info("commandstats")
                loop = client.info("stats")
        except (psutil.Error, redis.RedisError):
            return None
        commands = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()
        }
        turns = [
            int(loop.get(f"eventloop_{name}", 0)) for name in ("cycles", "duration_sum", "duration_cmd_sum")
        ]
        return RedisUse(times.user, times.system, disk_flushes(system.home), commands, *turns)

    def __sub__(self, earlier: RedisUse) -> RedisUse:
        commands = {}
        for name, (calls, usec) in self.commands.items():
            calls0, usec0 = earlier.commands.get(name, (0, 0))
            if calls > calls0:
                commands[name] = (calls - calls0, usec - usec0)
        flushes = None if self.flushes is None or earlier.flushes is None else self.flushes - earlier.flushes
        return RedisUse(
            self.user_s - earlier.user_s,
            self.system_s - earlier.system_s,
            flushes,
            commands,
            self.turns - earlier.turns,
            self.turn_us - earlier.turn_us,
            self.turn_command_us - earlier.turn_command_us,
        )


def wait_history_written(system: Stack) -> float:
    """Wait until the history writer has written every entry of the stream (it trims what it
    wrote), so that a step's CPU holds the writer's work for that step; returns the seconds
    waited. At high rates the writer, at idle priority, is behind when the last result comes."""
    if "history" not in system.pids():
        return 0.0
    started = time.monotonic()
    with redis.Redis.from_url(system.redis_url) as client:
        while client.xlen(HISTORY_STREAM_KEY) and time.monotonic() - started < DRAIN_TIMEOUT_S * 4:
            time.sleep(0.05)
    return time.monotonic() - started


def fsync_line(when: str) -> FsyncCost:
    """Time append + fdatasync on the disk the stacks keep their Redis data on, and say so."""
    cost = fsync_cost(Path(tempfile.gettempdir()))
    print(f"fsync on the disk under {tempfile.gettempdir()}, {when}: {cost}", flush=True)
    return cost


def run_design(design: Design, rates: list[float], args: argparse.Namespace) -> dict[str, Any]:
    system, url, token = start_system(design)
    has_history = "history" in system.pids()
    ctx = mp.get_context("spawn")
    jobs, out = ctx.Queue(), ctx.Queue()
    process = ctx.Process(target=loader, args=(url, token, design, jobs, out))
    process.start()
    steps: list[Step] = []
    try:
        jobs.put((min(rates[0], REFERENCE_RATE), WARMUP_S))
        out.get(timeout=DRAIN_TIMEOUT_S + 60)
        pids = {**system.pids(), "loader": process.pid or 0}

        def step(rate: float, seconds: float) -> Step:
            before, rss0 = cpu_seconds(pids), rss(pids)
            redis0 = RedisUse.sample(system)
            steal = StealSampler() if args.timeline else None
            jobs.put((rate, seconds))
            result = out.get(timeout=seconds * 3 + DRAIN_TIMEOUT_S + 60)
            behind_s = wait_history_written(system)
            after, rss1 = cpu_seconds(pids), rss(pids)
            redis1 = RedisUse.sample(system)
            if steal is not None:
                print_timeline(result.get("lat") or [], seconds, steal.stop())
            done = Step(
                rate,
                result,
                {n: after[n] - before[n] for n in pids},
                {n: (rss0[n], rss1[n]) for n in pids},
                None if redis0 is None or redis1 is None else redis1 - redis0,
                behind_s,
            )
            lat = result.get("lat") or [float("nan")]
            print(
                f"  {design.key:8} {rate:>8,.0f}/s: sent {result.get('sent', 0):,} answered "
                f"{result.get('answered', 0):,} last result +{result.get('lag_s', float('nan')):.2f} s, "
                f"p50 {percentile(lat, 50):.1f} ms p99 {percentile(lat, 99):.1f} ms, CPU ms/order "
                + " ".join(f"{n} {v:.3f}" for n, v in done.cpu_ms_per_order().items())
                + ("" if done.sustained else "  <- not sustained")
                + (f" (history written {behind_s:.1f} s after the last result)" if behind_s >= 0.5 else "")
                + (f" ({result['error']})" if result.get("error") else ""),
                flush=True,
            )
            return done

        reference = step(REFERENCE_RATE, args.memory_seconds)
        for rate in rates:
            if rate == REFERENCE_RATE:
                steps.append(reference)
                if not reference.sustained:
                    break
                continue
            steps.append(step(rate, args.step_seconds))
            if not steps[-1].sustained:
                break
        jobs.put(None)
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
        system.close()
    best = max((s for s in steps if s.sustained), key=lambda s: s.rate, default=None)
    # the history too: written within KEEP_UP_S of the last result
    written = [s for s in steps if s.sustained and s.history_behind_s <= KEEP_UP_S]
    return {
        "reference": reference,
        "best": best,
        "history_best": max(written, key=lambda s: s.rate, default=None) if has_history else None,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument(
        "--memory-seconds",
        type=float,
        default=60.0,
        help="length of the 1,000/s step, over which memory growth is measured",
    )
    parser.add_argument("--rates-single", default="500,1000,2000,3000,4000,6000,8000")
    parser.add_argument("--rates-batched", default="1000,5000,10000,20000,25000,30000,40000,60000")
    parser.add_argument("--designs", default=",".join(d.key for d in DESIGNS))
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="per step, each second's worst submit-to-result beside the machine's steal time in that second",
    )
    args = parser.parse_args()
    chosen = [d for d in DESIGNS if d.key in args.designs.split(",")]
    runs: dict[str, dict[str, Any]] = {}
    fsyncs = [fsync_line("before the designs")]
    for design in chosen:
        ramp = args.rates_single if design.rates == "single" else args.rates_batched
        rates = [float(r) for r in ramp.split(",")]
        print(f"== {design.title}", flush=True)
        runs[design.key] = run_design(design, sorted(set(rates) | {REFERENCE_RATE}), args)
    fsyncs.append(fsync_line("after them"))
    report(chosen, runs, args)
    report_redis(chosen, runs, fsyncs)
    report_targets(runs)


#: Issue 14 item 3, per order: single-order events at 1,000/s (ms) and orders in 100-order
#: commands (us). The web's bars are relative to the echo floor of the same payload.
SINGLE_WEB_VS_ECHO = 1.5
SINGLE_ENGINE_MS, SINGLE_REDIS_MS, SINGLE_TOTAL_MS = 0.050, 0.030, 0.45
BATCHED_ENGINE_US, BATCHED_TOTAL_US = 5.0, 20.0
#: The load generator is not a HEAN process.
LOADER = "loader"


def _server_ms(step: Step) -> dict[str, float]:
    return {name: ms for name, ms in step.cpu_ms_per_order().items() if name != LOADER}


#: Not a bar of its own: issue 14's "today" figures for all of HEAN were web + engine worker +
#: Redis, bench_orders running no history writer then ("The history writer" in the README).
ALL_BUT_HISTORY = "  all but the history writer (as issue 14 counted when filed)"


def _without_history(cpu: dict[str, float]) -> float:
    return sum(ms for name, ms in cpu.items() if name != "history")


def target_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Issue 14 item 3's bars beside this run's figures: [what, measured, bar, met?] rows, for
    the designs that ran (the web's bars need the echo floor of the same payload)."""
    rows: list[list[str]] = []

    def row(what: str, value: float, bar: float, unit: str, scale: float) -> None:
        rows.append(
            [
                what,
                f"{value * scale:.3f} {unit}",
                f"<= {bar * scale:.3f} {unit}",
                "met" if value <= bar else "NOT met",
            ]
        )

    single, echo1 = runs.get("hean1"), runs.get("echo1")
    if single is not None:
        cpu = _server_ms(single["reference"])
        if echo1 is not None:
            floor = _server_ms(echo1["reference"]).get("echo", 0.0)
            row("single @1,000/s: web", cpu.get("web", 0.0), SINGLE_WEB_VS_ECHO * floor, "ms", 1.0)
        row("single @1,000/s: engine worker", cpu.get("worker-engine", 0.0), SINGLE_ENGINE_MS, "ms", 1.0)
        row("single @1,000/s: Redis", cpu.get("redis", 0.0), SINGLE_REDIS_MS, "ms", 1.0)
        durable = runs.get("echo1redis")
        if durable is not None:  # not a bar of the issue: the floor of the Redis one
            redis_floor = _server_ms(durable["reference"]).get("redis", 0.0)
            row("  floor: Redis of the echo after a Redis write", redis_floor, SINGLE_REDIS_MS, "ms", 1.0)
        grouped = runs.get("echo1group")
        # nor these: the least a durable ack costs with HEAN's batching
        grouped_cpu = _server_ms(grouped["reference"]) if grouped is not None else None
        if grouped_cpu is not None:
            grouped_redis = grouped_cpu.get("redis", 0.0)
            row("  floor: Redis of the echo after grouped writes", grouped_redis, SINGLE_REDIS_MS, "ms", 1.0)
        row("single @1,000/s: all HEAN processes", sum(cpu.values()), SINGLE_TOTAL_MS, "ms", 1.0)
        row(ALL_BUT_HISTORY, _without_history(cpu), SINGLE_TOTAL_MS, "ms", 1.0)
        pipeline = runs.get("floor1")
        if pipeline is not None:  # nor these: HEAN's shape with none of its safeguards
            piped = _server_ms(pipeline["reference"])
            worker = piped.get("floor-worker", 0.0)
            row("  floor: the pipeline's worker", worker, SINGLE_ENGINE_MS, "ms", 1.0)
            row("  floor: the pipeline's Redis", piped.get("redis", 0.0), SINGLE_REDIS_MS, "ms", 1.0)
            row("  floor: all of the pipeline", sum(piped.values()), SINGLE_TOTAL_MS, "ms", 1.0)
        if grouped_cpu is not None:
            grouped_all = sum(grouped_cpu.values())
            row("  floor: all of the echo after grouped writes", grouped_all, SINGLE_TOTAL_MS, "ms", 1.0)
    batched, echo100 = runs.get("hean100"), runs.get("echo100")
    if batched is not None:
        for label, step in (("", batched["reference"]), (" (highest sustained)", batched["best"])):
            if step is None:
                continue
            cpu = _server_ms(step)
            what = f"100-order commands @{step.rate:,.0f}/s{label}"
            # the echo at the same rate: its CPU per order falls with the rate as the web's does
            # (10.1 us at 25,000/s against 13.0 at 1,000/s in one run)
            echoed = [echo100["reference"], *echo100["steps"]] if echo100 is not None else []
            echo = next((e for e in echoed if e.rate == step.rate), None)
            if echo is not None:
                row(f"{what}: web", cpu.get("web", 0.0), _server_ms(echo).get("echo", 0.0), "us", 1000.0)
            engine_bar, total_bar = BATCHED_ENGINE_US / 1000.0, BATCHED_TOTAL_US / 1000.0
            row(f"{what}: engine worker", cpu.get("worker-engine", 0.0), engine_bar, "us", 1000.0)
            row(f"{what}: all HEAN processes", sum(cpu.values()), total_bar, "us", 1000.0)
            row(ALL_BUT_HISTORY, _without_history(cpu), total_bar, "us", 1000.0)
    return rows


def report_targets(runs: dict[str, dict[str, Any]]) -> None:
    """Issue 14 item 3: CPU per order against its bars, met or not, from this run alone."""
    rows = target_rows(runs)
    if rows:
        print_table(
            "issue 14 item 3: CPU per order (server processes; the loader not counted)",
            ["what", "this run", "bar", ""],
            rows,
        )


def report_redis(chosen: list[Design], runs: dict[str, dict[str, Any]], fsyncs: list[FsyncCost]) -> None:
    """Redis's CPU per order beside what its fsyncs alone cost (under `appendfsync always` it
    fsyncs once in every event-loop turn that wrote, and the disk counts each as a cache flush;
    every process's flushes on that disk count, the history writer's database included), and
    the commands it ran per order."""
    cpu_us = sorted(cost.cpu_us for cost in fsyncs)
    print("\nThe private Redis at 1,000 orders/s, per order:")
    for design in chosen:
        ref = runs[design.key]["reference"]
        use: RedisUse | None = ref.redis
        if use is None or design.system == "echo":  # the bare echo floors do not use their Redis
            continue
        answered = max(1, ref.result.get("answered", 0))
        line = (
            f"  {design.title:34} CPU user {1000 * use.user_s / answered:.3f} + system "
            f"{1000 * use.system_s / answered:.3f} ms"
        )
        if use.flushes is not None:
            flushes = use.flushes / answered
            low, high = (flushes * us / 1000.0 for us in (cpu_us[0], cpu_us[-1]))
            line += (
                f"; the disk's cache flushes {flushes:.2f}, at {cpu_us[0]:.0f}-{cpu_us[-1]:.0f} us "
                f"of CPU per fsync {low:.3f}-{high:.3f} ms"
            )
        print(line)
        if use.turns > 0:
            per_order, turn_cpu_us = use.turns / answered, 1e6 * (use.user_s + use.system_s) / use.turns
            wall_us, command_us = use.turn_us / use.turns, use.turn_command_us / use.turns
            print(
                f"    event-loop turns {per_order:.2f} per order, each {wall_us:.0f} us of wall "
                f"time ({command_us:.0f} in commands; the rest reads, replies and, in "
                f"a turn that wrote, the AOF write and fsync) and {turn_cpu_us:.0f} us of Redis's CPU"
            )
        busiest = sorted(use.commands.items(), key=lambda item: -item[1][1])[:REDIS_COMMANDS_SHOWN]
        print(
            "    "
            + ", ".join(
                f"{name} {calls / answered:.2f} x {usec / max(1, calls):.1f} us"
                for name, (calls, usec) in busiest
            )
            + " (calls per order x Redis's time per call; a script's time includes its commands')"
        )


def report(chosen: list[Design], runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    naive = runs.get("naive")
    naive_best = naive["best"].rate if naive and naive["best"] else None
    naive_cpu = sum(v for n, v in naive["reference"].cpu_ms_per_order().items()) if naive else None
    rows = []
    for design in chosen:
        run = runs[design.key]
        ref, best = run["reference"], run["best"]
        ref_lat = ref.result.get("lat") or [float("nan")]
        best_lat = (best.result.get("lat") if best else None) or [float("nan")]
        total_cpu = sum(ref.cpu_ms_per_order().values())
        growth = sum(after - before for before, after in ref.rss.values()) / 2**20
        rows.append(
            [
                design.title,
                f"{best.rate:,.0f}" if best else "< first step",
                f"{percentile(ref_lat, 50):.1f} / {percentile(ref_lat, 99):.1f}",
                f"{percentile(best_lat, 50):.1f} / {percentile(best_lat, 99):.1f}",
                f"{total_cpu:.3f}",
                f"{growth:+.1f}",
                f"{best.rate / naive_best:.1f}x" if best and naive_best else "-",
                f"{naive_cpu / total_cpu:.1f}x" if naive_cpu and total_cpu else "-",
            ]
        )
    print_table(
        f"orders through the system (steps {args.step_seconds:g} s; "
        f"the 1,000/s step {args.memory_seconds:g} s)",
        [
            "design",
            "highest sustained /s",
            "p50/p99 ms @1k/s",
            "p50/p99 ms @highest",
            "CPU ms/order @1k/s",
            "RSS growth MB @1k/s",
            "rate vs naive",
            "CPU vs naive",
        ],
        rows,
    )
    for design in chosen:
        if design.system == "hean":
            kept = runs[design.key]["history_best"]
            print(
                f"  {design.title}: the history writer kept up (the step written within {KEEP_UP_S:g} s of "
                f"its last result) to {f'{kept.rate:,.0f}/s' if kept else 'no step'}"
            )
    print("\nCPU ms per order at 1,000 orders/s, per process (loader included):")
    for design in chosen:
        ref = runs[design.key]["reference"]
        parts = ", ".join(f"{n} {v:.3f}" for n, v in ref.cpu_ms_per_order().items())
        print(f"  {design.title:34} {parts}")
    print(f"\nRSS growth MB over the 1,000/s step ({args.memory_seconds:g} s), per process:")
    for design in chosen:
        ref = runs[design.key]["reference"]
        parts = ", ".join(f"{n} {(after - before) / 2**20:+.1f}" for n, (before, after) in ref.rss.items())
        print(f"  {design.title:34} {parts}")
    print("\nCPU ms per order at the highest sustained rate, per process:")
    for design in chosen:
        best = runs[design.key]["best"]
        if best is not None:
            parts = ", ".join(f"{n} {v:.4f}" for n, v in best.cpu_ms_per_order().items())
            print(f"  {design.title:34} {best.rate:>8,.0f}/s: {parts}")
    lost = {
        d.key: r["reference"].result.get("sent", 0) - r["reference"].result.get("answered", 0)
        for d, r in zip(chosen, runs.values(), strict=True)
    }
    print(f"\nunanswered orders in the 1,000/s steps: {lost}")


if __name__ == "__main__":
    main()
