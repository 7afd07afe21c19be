"""A long run at a steady rate: does anything grow or slow down as HEAN keeps going?

Every other benchmark runs for seconds to a minute from an empty system. A trader's system runs
for hours, and some costs grow with what it has seen: the engine's idempotency window (full at
100,000 client order ids, 100 s at 1,000 orders/s), which every snapshot carries; the database
the history writer inserts into; Redis's memory and its append-only file. This starts what
`hean up` runs (every process, its own private Redis, a fresh database), offers --rate orders/s
for --minutes, and prints a line every --interval seconds:

- orders sent and answered in the interval, and the submit-to-result p50 / p99 / worst;
- CPU ms per order of each process in the interval (the loader included, apart);
- resident memory of each process, Redis's `used_memory`, the AOF, the database file, the
  stored engine snapshot and the history stream's backlog.

At the end it sets the first interval after --settle-s beside the last: each process's CPU per
order and their ratio, memory growth, and whether every order was answered. Never fails on
speed; a run whose orders are not all answered exits 1.

    .venv/bin/python benchmarks/bench_soak.py [--minutes M] [--rate R] [--per-event 1|100]
                                              [--interval S] [--settle-s S]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import redis
from _harness import RawSocketIO, Stack, busy_and_steal, open_for_orders, percentile, print_table
from bench_orders import SYMBOL, command
from sqlalchemy.engine import make_url

from hean.gc_policy import freeze_startup_objects
from hean.processes import process_names
from hean.testing.processes import cpu_seconds, rss
from hean.topology import ENGINE_SNAPSHOT_KEY, HISTORY_STREAM_KEY

#: How long the loader waits for the last results after it stopped sending.
DRAIN_TIMEOUT_S = 60.0
#: The loader gives up when it falls this far behind its schedule (the system cannot keep up).
GIVE_UP_BEHIND_S = 10.0
MB = 1024 * 1024


# ----------------------------------------------------------------------------- the loader


def loader(
    url: str, token: str, rate: float, per_event: int, seconds: float, interval: float, out: Any
) -> None:
    """Offer `rate` orders/s in events of `per_event` orders for `seconds` on one raw Socket.IO
    connection; every `interval` seconds put (sent, answered, latencies ms) of that interval on
    `out`, then a final record {"sent", "answered", "error"}."""
    freeze_startup_objects("loader")
    client = RawSocketIO(url, {"token": token})
    prefix = uuid.uuid4().hex[:8]
    events = max(1, int(rate * seconds / per_event))
    sent_at = [0.0] * events
    remaining = [per_event] * events
    lock = threading.Lock()
    window: dict[str, Any] = {"sent": 0, "answered": 0, "lat": []}
    totals = {"sent": 0, "answered": 0}
    done = threading.Event()
    error: list[str] = []

    def answer(i: int, orders: int, now: float) -> None:
        orders = min(orders, remaining[i])
        remaining[i] -= orders
        with lock:
            window["answered"] += orders
            window["lat"].extend([(now - sent_at[i]) * 1000.0] * orders)
            totals["answered"] += orders

    def read() -> None:
        try:
            while not done.is_set():
                kind, key, payload = client.recv()
                now = time.perf_counter()
                if kind == "ack":
                    if isinstance(payload, dict) and payload.get("accepted", True) is False:
                        answer(int(key) - 1, per_event, now)  # type: ignore[call-overload]
                elif key == "command_result" and isinstance(payload, dict):
                    request_id = str(payload.get("request_id", ""))
                    if request_id.startswith(prefix):
                        i = int(request_id.rsplit("-", 1)[1].lstrip("b"))
                        answer(i, int(payload.get("orders", per_event)), now)
        except Exception as exc:  # the connection closed: report what arrived
            if not done.is_set():
                error.append(f"{type(exc).__name__}: {exc}")

    def report() -> None:
        with lock:
            record = (window["sent"], window["answered"], window["lat"])
            window.update(sent=0, answered=0, lat=[])
        out.put(record)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.perf_counter()
    next_report = started + interval
    per_second = rate / per_event
    for i in range(events):
        due = started + i / per_second
        now = time.perf_counter()
        if now >= next_report:
            report()
            next_report += interval
        if due > now:
            time.sleep(due - now)
        elif now - due > GIVE_UP_BEHIND_S or error:
            if not error:
                error.append(f"fell {GIVE_UP_BEHIND_S:.0f} s behind its schedule")
            break
        sent_at[i] = time.perf_counter()
        client.ws.send(f"42{i + 1}{frames(prefix, i, per_event)}")
        with lock:
            window["sent"] += per_event
            totals["sent"] += per_event
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while totals["answered"] < totals["sent"] and time.perf_counter() < deadline and not error:
        time.sleep(0.05)
    report()
    done.set()
    client.close()
    out.put({"sent": totals["sent"], "answered": totals["answered"], "error": error[0] if error else None})


def frames(prefix: str, i: int, per_event: int) -> str:
    return json.dumps(["command", command(prefix, i, per_event)])


# ----------------------------------------------------------------------------- the system


@dataclass
class Sample:
    at_s: float
    cpu: dict[str, float]
    rss: dict[str, int]
    sizes: dict[str, int]
    machine: Any  # psutil.cpu_times(): the machine's busy and steal time

    def machine_since(self, earlier: Sample) -> str:
        busy, steal = busy_and_steal(earlier.machine, self.machine)
        return f"machine busy {busy:.0f}% steal {steal:.1f}%"


def sizes(system: Stack) -> dict[str, int]:
    """Redis's memory, its AOF, the database file, the stored snapshot, the history backlog."""
    found = {}
    try:
        with redis.Redis.from_url(system.redis_url) as client:
            found["redis used"] = int(client.info("memory")["used_memory"])
            found["snapshot"] = int(client.hstrlen(ENGINE_SNAPSHOT_KEY, "data"))
            found["history backlog"] = int(client.xlen(HISTORY_STREAM_KEY))
    except redis.RedisError:
        pass
    aof = system.home / "redis"
    found["aof"] = sum(p.stat().st_size for p in aof.rglob("*.aof*") if p.is_file()) if aof.exists() else 0
    found["database"] = sum(p.stat().st_size for p in database_files(system))
    return found


def database_files(system: Stack) -> list[Path]:
    """The SQLite database the processes use (DATABASE_URL's, or the default under the stack's
    home) with its log; none for another database."""
    url = system.env.get("DATABASE_URL")
    if url:
        parsed = make_url(url)
        if not parsed.drivername.startswith("sqlite") or not parsed.database:
            return []
        path = Path(parsed.database)
    else:
        path = system.home / "hean.db"
    return [p for p in (path, Path(f"{path}-wal")) if p.exists()]


def sample(system: Stack, pids: dict[str, int], started: float) -> Sample:
    return Sample(time.monotonic() - started, cpu_seconds(pids), rss(pids), sizes(system), psutil.cpu_times())


def per_order_ms(a: Sample, b: Sample, orders: int) -> dict[str, float]:
    return {name: 1000.0 * (b.cpu[name] - a.cpu[name]) / max(1, orders) for name in a.cpu}


def line(
    s: Sample, earlier: Sample, sent: int, answered: int, lat: list[float], cpu: dict[str, float]
) -> str:
    lat = lat or [float("nan")]
    hean = sum(v for n, v in cpu.items() if n != "loader")
    shown = " ".join(f"{n} {v:.3f}" for n, v in cpu.items())
    return (
        f"{s.at_s:6.0f} s: sent {sent:,} answered {answered:,}, p50 {percentile(lat, 50):.1f} "
        f"p99 {percentile(lat, 99):.1f} max {max(lat):.0f} ms | {s.machine_since(earlier)} | "
        f"CPU ms/order: all HEAN {hean:.3f}, "
        f"{shown} | RSS MB: "
        + " ".join(f"{n} {v / MB:.0f}" for n, v in s.rss.items())
        + " | "
        + ", ".join(
            f"{n} {v / MB:.1f} MB" if n != "history backlog" else f"{n} {v:,}" for n, v in s.sizes.items()
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="orders per second offered")
    parser.add_argument(
        "--per-event",
        type=int,
        choices=(1, 100),
        default=1,
        help="orders per event: single submit_order events, or 100-order submit_orders",
    )
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between report lines")
    parser.add_argument(
        "--settle-s", type=float, default=30.0, help="the first interval compared starts after this long"
    )
    parser.add_argument(
        "--processes",
        default=",".join(process_names()),
        help="the HEAN processes to start (default: all that `hean up` runs; bench_orders starts "
        "worker-engine,web,history)",
    )
    args = parser.parse_args()
    unknown = set(args.processes.split(",")) - set(process_names())
    if unknown or "web" not in args.processes.split(","):
        parser.error(f"--processes: unknown {sorted(unknown)}, or no web; choose from {process_names()}")
    seconds = args.minutes * 60.0
    if args.interval <= 0 or seconds < 2 * args.interval:
        parser.error("--minutes must hold at least two --interval")

    print(
        f"soak: {args.rate:,.0f} orders/s in events of {args.per_event} for {args.minutes:g} min, "
        f"processes {args.processes}",
        flush=True,
    )
    # the command rate limit off, as in bench_orders
    system = Stack(args.processes.split(","), HEAN_COMMAND_RATE="1000000")
    rows: list[tuple[Sample, int, int, list[float], dict[str, float]]] = []
    final: dict[str, Any] = {}
    try:
        open_for_orders(system, SYMBOL)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        process = ctx.Process(
            target=loader,
            args=(system.url, system.token, args.rate, args.per_event, seconds, args.interval, out),
        )
        pids = system.pids()
        started = time.monotonic()
        process.start()
        pids["loader"] = process.pid or 0
        previous = sample(system, pids, started)
        while True:
            record = out.get(timeout=seconds + DRAIN_TIMEOUT_S + 120)
            if isinstance(record, dict):
                final = record
                break
            sent, answered, lat = record
            now = sample(system, pids, started)
            cpu = per_order_ms(previous, now, answered)
            rows.append((now, sent, answered, lat, cpu))
            print(line(now, previous, sent, answered, lat, cpu), flush=True)
            previous = now
        process.join(30)
        if process.is_alive():
            process.kill()
    finally:
        system.close()

    report(rows, final, args.settle_s)
    if final.get("error") or final.get("answered", 0) < final.get("sent", 1):
        sys.exit(1)


def report(
    rows: list[tuple[Sample, int, int, list[float], dict[str, float]]], final: dict[str, Any], settle_s: float
) -> None:
    print(
        f"\nsent {final.get('sent', 0):,} orders, answered {final.get('answered', 0):,}"
        + (f" ({final['error']})" if final.get("error") else "")
    )
    # whole intervals only: the last record also holds the drain after sending stopped
    steady = [r for r in rows[:-1] if r[0].at_s > settle_s and r[2]]
    if len(steady) < 2:
        print("too short to compare a first and a last interval")
        return
    first, last = steady[0], steady[-1]
    names = list(first[4])
    table = []
    for name in names:
        a, b = first[4][name], last[4][name]
        table.append(
            [
                name,
                f"{a:.3f}",
                f"{b:.3f}",
                f"{b / a:.2f}x" if a > 0 else "-",
                f"{first[0].rss[name] / MB:.0f}",
                f"{last[0].rss[name] / MB:.0f}",
                f"{(last[0].rss[name] - first[0].rss[name]) / MB:+.1f}",
            ]
        )
    hean_a = sum(v for n, v in first[4].items() if n != "loader")
    hean_b = sum(v for n, v in last[4].items() if n != "loader")
    table.append(["all HEAN", f"{hean_a:.3f}", f"{hean_b:.3f}", f"{hean_b / hean_a:.2f}x", "", "", ""])
    header = ["process", "CPU ms/order first", "last", "ratio", "RSS MB first", "last", "growth MB"]
    print_table(
        f"first steady interval (ending at {first[0].at_s:.0f} s) against the last (ending at "
        f"{last[0].at_s:.0f} s)",
        header,
        table,
    )
    lat_rows = [
        [f"{r[0].at_s:.0f} s", f"{percentile(r[3], 50):.1f}", f"{percentile(r[3], 99):.1f}"]
        for r in (first, last)
    ]
    print_table("submit-to-result", ["interval ending", "p50 ms", "p99 ms"], lat_rows)
    size_rows = [
        [name, f"{first[0].sizes.get(name, 0) / MB:.1f}", f"{last[0].sizes.get(name, 0) / MB:.1f}"]
        for name in last[0].sizes
        if name != "history backlog"
    ]
    print_table("sizes (MB)", ["what", "first", "last"], size_rows)


if __name__ == "__main__":
    main()
