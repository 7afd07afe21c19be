"""Ack round trip: a raw Flask-SocketIO echo (the floor), HEAN `command` idle, and HEAN
`command` while 1,000 orders/s flow through the whole system. Prints p50 / p99 / max.

Targets (issue 6): p99 under 5 ms under load, and idle within 1.5x of the raw floor.
Runs twice: with the scheduler's own placement, and with Redis and the web process pinned to
one CPU (HEAN_CPU_AFFINITY; see hean/affinity.py), the floors pinned like the web process.

Two floors, measured back to back (each event sent when the last one's ack is in): the bare
echo, and an echo that writes the event to a Redis list before answering, the least that an
ack "after a confirmed broker publish" costs here. HEAN idle sends each command once the
previous one's `command_result` is in, so that no earlier command is still being executed.
Under load the measuring client sends one command every 1/--probe-rate s, in turns of 20 to
HEAN and to each floor (what the load alone does to those round trips on this machine), so that
its own orders add little to the load it measures (back to back, they added 300-450 orders/s
to the 1,000). Each load phase also prints the CPU each process used, the machine's busy and
steal time: the loader and the measuring client share this machine's CPUs with HEAN.
Usage: python benchmarks/bench_ack.py [--samples N] [--load-seconds S] [--probe-rate R]
                                      [--affinity SPEC]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from _harness import (
    REPO_ROOT,
    CpuMeter,
    RawSocketIO,
    RedisStalls,
    percentile,
    print_table,
    stack,
    trading_client,
    wait_http,
)

from hean.redis_server import free_port

#: Issue 14 item 7: HEAN's ack p99 under 1,000 single orders/s, in ms.
ITEM7_P99_MS = 10.0


def measure(
    client: RawSocketIO,
    payload: Any,
    samples: int,
    warmup: int = 200,
    interval: float = 0.0,
    settle: bool = False,
) -> list[float]:
    """Round-trip times in ms of `command` calls (send -> Socket.IO ack), after a warm-up;
    one call every `interval` seconds, or back to back. With `settle`, each call waits for
    its command's `command_result` before the next is sent, so that no earlier command is
    still being executed when the next one arrives (an idle system)."""
    times = []
    due = time.perf_counter()
    for i in range(samples + warmup):
        body = payload() if callable(payload) else payload
        if interval:
            time.sleep(max(0.0, due - time.perf_counter()))
            due = time.perf_counter() + interval
        started = time.perf_counter()
        reply = client.call("command", body, result_of=body["request_id"] if settle else None)
        elapsed = (time.perf_counter() - started) * 1000.0
        if i >= warmup:
            times.append(elapsed)
        if isinstance(reply, dict) and reply.get("accepted") is False:
            raise RuntimeError(f"command refused: {reply}")
        if settle:
            client.wait_result()
    return times


def order(i: int, prefix: str) -> dict[str, Any]:
    return {
        "command": "submit_order",
        "params": {
            "client_order_id": f"{prefix}-{i}",
            "symbol": "BTCUSDT",
            "side": "BUY" if i % 2 == 0 else "SELL",
            "quantity": "0.001",
        },
        "request_id": f"{prefix}-{i}",
    }


def orders_command(i: int, prefix: str, size: int) -> dict[str, Any]:
    orders = [order(i * size + k, prefix)["params"] for k in range(size)]
    return {"command": "submit_orders", "params": {"orders": orders}, "request_id": f"{prefix}-b{i}"}


def load(url: str, token: str, rate: int, seconds: float, per_event: int, out: Any) -> None:
    """Send `rate` orders/s for `seconds` on its own connection, `per_event` orders per command
    (1: `submit_order`, more: `submit_orders`); count acks and results."""
    client = RawSocketIO(url, {"token": token})
    events_per_s = rate / per_event
    total = int(events_per_s * seconds)
    counts: Counter[str] = Counter()
    done = threading.Event()

    def read() -> None:
        try:
            consume()
        except Exception as exc:  # report, do not hang the benchmark
            counts[f"reader_error:{type(exc).__name__}:{exc}"[:120]] += 1
        done.set()

    def consume() -> None:
        while counts["results"] < total:
            kind, key, payload = client.recv()
            if kind == "ack":
                accepted = isinstance(payload, dict) and payload.get("accepted")
                code = "acked" if accepted else f"refused:{(payload or {}).get('error', {}).get('code')}"
                counts[code] += 1
            elif key == "command_result":
                counts["results"] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    prefix = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for i in range(total):
        delay = started + i / events_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.send("command", order(i, prefix) if per_event == 1 else orders_command(i, prefix, per_event))
    sent_for = time.perf_counter() - started
    done.wait(120)
    drained = time.perf_counter() - started
    client.close()
    out.put(
        {
            "sent": total * per_event,
            "events": total,
            "per_event": per_event,
            "counts": dict(counts),
            "send_s": sent_for,
            "drain_s": drained,
        }
    )


def row(name: str, times: list[float], floor_p99: float | None) -> list[object]:
    p99 = percentile(times, 99)
    ratio = f"{p99 / floor_p99:.2f}x" if floor_p99 else "1.00x (floor)"
    return [
        name,
        len(times),
        f"{percentile(times, 50):.3f}",
        f"{p99:.3f}",
        f"{max(times):.3f}",
        ratio,
    ]


#: The layouts compared: the scheduler's own placement, and the ack path (Redis + web) on one
#: CPU with everything else on the other (see hean/affinity.py for why this matters on VMs).
LAYOUTS = (("unpinned", ""), ("pinned", "redis=0;web=0;*=1"))


def run_layout(args: argparse.Namespace, affinity: str) -> dict[str, Any]:
    """Floor, idle and loaded measurements with HEAN's processes laid out by `affinity`."""
    env = {"HEAN_COMMAND_RATE": "100000", "HEAN_CPU_AFFINITY": affinity}
    with stack(["worker-engine", "worker-llm", "web"], **env) as system:
        floors = {}  # the bare echo, and the echo that publishes to Redis first
        script = str(REPO_ROOT / "benchmarks" / "echo_server.py")
        for name, extra in (("echo", []), ("echo+redis", ["--redis"])):
            port = free_port()
            # the floors run where the web runs
            system.spawn(name, [sys.executable, script, str(port), *extra], pin_as="web")
            wait_http(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling")
            floors[name] = RawSocketIO(f"http://127.0.0.1:{port}")
        echo_body = {"command": "stop", "params": {}, "request_id": "x"}
        floor = measure(floors["echo"], echo_body, args.samples)
        floor_publish = measure(floors["echo+redis"], echo_body, args.samples)

        client = trading_client(system)
        prefix = uuid.uuid4().hex[:8]
        counter = iter(range(10**9))
        idle = measure(client, lambda: order(next(counter), "idle" + prefix), args.samples, settle=True)

        ctx = mp.get_context("spawn")
        loaded: dict[int, list[float]] = {}
        loaded_floors: dict[str, dict[int, list[float]]] = {name: {} for name in floors}
        stats: dict[int, dict[str, Any]] = {}
        cpu: dict[int, str] = {}
        for per_event in (100, 1):
            out: Any = ctx.Queue()
            loader = ctx.Process(
                target=load, args=(system.url, system.token, args.rate, args.load_seconds, per_event, out)
            )
            loader.start()
            time.sleep(1.0)  # let the load reach its rate
            meter = CpuMeter({**system.pids(), "loader": loader.pid or 0, "measuring client": os.getpid()})
            stalls = RedisStalls(system.redis_url)
            loaded[per_event] = []
            for name in floors:
                loaded_floors[name][per_event] = []
            until = time.perf_counter() + args.load_seconds - 2.0
            interval = 1.0 / args.probe_rate
            probe = lambda: order(next(counter), "load" + prefix)  # noqa: E731
            while time.perf_counter() < until:  # HEAN and each floor, in turns of 20 probes
                loaded[per_event] += measure(client, probe, 20, 0, interval)
                for name, floor_client in floors.items():
                    loaded_floors[name][per_event] += measure(floor_client, echo_body, 20, 0, interval)
            cpu[per_event] = f"{meter.report()}\n  {stalls.report()}"
            stats[per_event] = out.get(timeout=180)
            loader.join()
        client.close()
        for floor_client in floors.values():
            floor_client.close()
    return {
        "floor": floor,
        "floor_publish": floor_publish,
        "idle": idle,
        "loaded": loaded,
        "loaded_floors": loaded_floors,
        "stats": stats,
        "cpu": cpu,
    }


def loaded_series(m: dict[str, Any]) -> list[tuple[str, dict[int, list[float]]]]:
    """Round trips under load, per orders per command, of each floor and of HEAN."""
    return [
        ("raw echo", m["loaded_floors"]["echo"]),
        ("echo after one Redis write", m["loaded_floors"]["echo+redis"]),
        ("HEAN command", m["loaded"]),
    ]


def report(args: argparse.Namespace, name: str, affinity: str, m: dict[str, Any]) -> None:
    floor, idle, stats = m["floor"], m["idle"], m["stats"]
    floor_p99 = percentile(floor, 99)
    print_table(
        f"[{name}: HEAN_CPU_AFFINITY={affinity!r}] ack round trip (ms): "
        "client -> web (validate, reserve id, publish to the broker) -> ack",
        ["scenario", "n", "p50", "p99", "max", "p99 vs floor"],
        [
            row("raw Flask-SocketIO echo (floor)", floor, None),
            row("echo after one Redis write (publish floor)", m["floor_publish"], floor_p99),
            row("HEAN command, idle", idle, floor_p99),
            *[
                row(f"{label}, {args.rate} orders/s as {kind} commands", times[per_event], floor_p99)
                for per_event, kind in ((100, "100-order"), (1, "single-order"))
                for label, times in loaded_series(m)
            ],
        ],
    )
    print(f"(under load, {args.probe_rate:g} measured commands/s on top of the {args.rate} orders/s)")
    for per_event, st in stats.items():
        counts = st["counts"]
        results = counts.get("results", 0) * per_event
        print(
            f"load ({per_event} per command): sent {st['sent']} orders in {st['events']} commands over "
            f"{st['send_s']:.1f} s ({st['sent'] / st['send_s']:.0f} orders/s); acks {counts}; "
            f"all results in after {st['drain_s']:.1f} s; orders without a result: {st['sent'] - results}"
        )
        print(f"  {m['cpu'][per_event]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--load-seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument(
        "--probe-rate", type=float, default=100.0, help="measured commands per second under load"
    )
    parser.add_argument(
        "--affinity", default=None, help="measure only this HEAN_CPU_AFFINITY layout ('' = unpinned)"
    )
    args = parser.parse_args()
    layouts = LAYOUTS if args.affinity is None else (("given", args.affinity),)

    results = {name: run_layout(args, affinity) for name, affinity in layouts}
    for name, affinity in layouts:
        report(args, name, affinity, results[name])
    print("\ntargets: p99 < 5 ms under load; idle p99 <= 1.5x the floor's p99 (same layout)")
    for name, _ in layouts:
        m = results[name]
        p99 = {key: percentile(m[key], 99) for key in ("floor", "floor_publish", "idle")}
        under = {
            label: " / ".join(f"{percentile(times[n], 99):.2f}" for n in (100, 1))
            for label, times in loaded_series(m)
        }
        print(
            f"  {name:<9} under load p99 (batched / single, ms): "
            + "; ".join(f"{label} {text}" for label, text in under.items())
            + f"\n  {'':<9} idle p99 / floor p99 = {p99['idle'] / p99['floor']:.2f} "
            f"(an echo after one Redis write: {p99['floor_publish'] / p99['floor']:.2f})"
        )
    bar = f"at most {ITEM7_P99_MS:g} ms"
    print(f"\nissue 14 item 7: HEAN's ack p99 under {args.rate:,} single orders/s {bar}")
    for name, _ in layouts:
        m = results[name]
        hean, floor = (percentile(times[1], 99) for times in (m["loaded"], m["loaded_floors"]["echo+redis"]))
        verdict = "met" if hean <= ITEM7_P99_MS else "NOT met"
        print(f"  {name:<9} {hean:.2f} ms: {verdict} (the echo after one Redis write: {floor:.2f} ms)")


if __name__ == "__main__":
    main()
