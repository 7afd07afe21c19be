"""hean.client's own CPU per order at 1,000 single submits/s, against a plain python-socketio
client sending the same single `submit_order` events (the baseline), through web + engine worker.

Each client runs alone in its own process (spawned), sends `--rate` single orders per second
for `--seconds` s (each order at its own due time, after a 1 s warm-up that is not counted)
and waits for every result; its CPU is `time.process_time()` of that process over the
measured part (all its threads: sending, reading, settling futures), less what the load
generator's own waits between orders took (`time.thread_time()` around each sleep: a timer and a
wake-up per order, not the client's work); the process's whole CPU is printed too. Also
printed: mean and p99 submit-to-result latency, and how many Socket.IO events carried the orders.
Target (issue 14): hean.client at most 0.2 ms of its own CPU per order, coalescing on.

Usage: python benchmarks/bench_client.py [--rate R] [--seconds S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CpuMeter, percentile, print_table, stack

TARGET_CPU_MS = 0.2
SYMBOL = "BTCUSDT"
RESULT_TIMEOUT_S = 120.0


def pace(rate: float, count: int, send: Any) -> float:
    """Call `send(i)` for i in range(count), each at its own due time (`rate` per second).
    Returns the CPU seconds its own waiting took (the load generator's, not the client's: a
    sleep until the next due time costs a timer and a wake-up, tens of us on this VM)."""
    started = time.perf_counter()
    waiting = 0.0
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            before = time.thread_time()
            time.sleep(delay)
            waiting += time.thread_time() - before
        send(i)
    return waiting


def run_hean_client(url: str, token: str, rate: float, seconds: float, coalesce: bool) -> dict[str, Any]:
    from hean.client import Client

    latencies: list[float] = []
    carriers: set[str] = set()
    with Client(url, token, coalesce=coalesce) as client:

        def phase(count: int, measured: bool) -> tuple[int, int, float]:
            handles = []

            def send(i: int) -> None:
                sent_at = time.perf_counter()
                handle = client.submit_order(SYMBOL, "BUY" if i % 2 else "SELL", "0.1")
                if measured:
                    handle.result.add_done_callback(
                        lambda _, t=sent_at: latencies.append((time.perf_counter() - t) * 1000.0)
                    )
                handles.append(handle)

            pacing = pace(rate, count, send)
            ok = failed = 0
            for handle in handles:
                try:
                    handle.wait(RESULT_TIMEOUT_S)
                    ok += 1
                except Exception:
                    failed += 1
                carriers.add(handle.request_id)
            return ok, failed, pacing

        phase(int(rate), measured=False)  # warm-up
        carriers.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ok, failed, pacing = phase(int(rate * seconds), measured=True)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "ok": ok,
        "failed": failed,
        "cpu_s": cpu,
        "pacing_cpu_s": pacing,
        "wall_s": wall,
        "lat": latencies,
        "events": len(carriers),
    }


def run_socketio_client(url: str, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """The baseline: python-socketio's Client, one `command` event per order, results by event."""
    import socketio

    sio = socketio.Client(reconnection=False)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    outcome = {"ok": 0, "failed": 0}
    all_in = threading.Event()
    expected = [0]
    lock = threading.Lock()

    def on_result(data: dict[str, Any]) -> None:
        t0 = sent_at.pop(data["request_id"], None)
        if t0 is None:
            return
        with lock:
            latencies.append((time.perf_counter() - t0) * 1000.0)
            outcome["ok" if data.get("success") else "failed"] += 1
            if outcome["ok"] + outcome["failed"] >= expected[0]:
                all_in.set()

    sio.on("command_result", on_result)
    sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    prefix = uuid.uuid4().hex[:8]

    def phase(count: int, tag: str) -> float:
        with lock:
            latencies.clear()
            outcome.update(ok=0, failed=0)
            expected[0] = count
            all_in.clear()

        def send(i: int) -> None:
            request_id = f"{prefix}-{tag}{i}"
            sent_at[request_id] = time.perf_counter()
            params = {"client_order_id": request_id, "symbol": SYMBOL, "side": "BUY" if i % 2 else "SELL"}
            params["quantity"] = "0.1"
            sio.emit("command", {"command": "submit_order", "params": params, "request_id": request_id})

        pacing = pace(rate, count, send)
        all_in.wait(RESULT_TIMEOUT_S)
        return pacing

    phase(int(rate), "w")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pacing = phase(int(rate * seconds), "m")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sio.disconnect()
    return {
        **outcome,
        "cpu_s": cpu,
        "pacing_cpu_s": pacing,
        "wall_s": wall,
        "lat": list(latencies),
        "events": int(rate * seconds),
    }


def child(kind: str, url: str, token: str, rate: float, seconds: float, out: Any) -> None:
    try:
        if kind == "socketio":
            out.put(run_socketio_client(url, token, rate, seconds))
        else:
            out.put(run_hean_client(url, token, rate, seconds, coalesce=kind == "hean"))
    except Exception as exc:  # report it; never hang or fail the benchmark
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(
    kind: str, url: str, token: str, args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=child, args=(kind, url, token, args.rate, args.seconds, out))
    process.start()
    meter = CpuMeter(pids)
    result: dict[str, Any] = out.get(timeout=args.seconds * 4 + RESULT_TIMEOUT_S + 60)
    result["machine"] = meter.report()
    process.join(30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="single orders per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per client")
    args = parser.parse_args()

    from hean.client import Client

    with stack(["worker-engine", "web"]) as system:
        with Client(system.url, system.token) as admin:  # a running engine with a market
            if admin.command("stop").wait(60)["state"] == "HALTED":
                admin.command("reset_kill_switch").wait(60)
            admin.command("risk_adjust", {"fee_rate": "0"}).wait(60)
            market = {"symbol": SYMBOL, "bid": "100", "ask": "100", "last": "100"}
            admin.command("update_market", market).wait(60)
            admin.command("start").wait(60)
        runs = {}
        for kind in ("socketio", "hean", "hean-single"):
            print(f"... {kind}: {args.rate:g} single orders/s for {args.seconds:g} s", flush=True)
            runs[kind] = measure(kind, system.url, system.token, args, system.pids())
            if "error" in runs[kind]:
                print(f"    failed: {runs[kind]['error']}")
            else:
                print(f"    {runs[kind]['machine']}")

    def figures(run: dict[str, Any]) -> dict[str, float]:
        if "error" in run:
            return {}
        answered = run["ok"] + run["failed"]
        return {
            "client CPU ms/order": 1000.0 * (run["cpu_s"] - run["pacing_cpu_s"]) / max(1, answered),
            "client CPU % of one core": 100.0 * (run["cpu_s"] - run["pacing_cpu_s"]) / run["wall_s"],
            "pacing CPU ms/order": 1000.0 * run["pacing_cpu_s"] / max(1, answered),
            "process CPU ms/order": 1000.0 * run["cpu_s"] / max(1, answered),
            "mean submit-to-result ms": statistics.fmean(run["lat"]) if run["lat"] else float("nan"),
            "p99 submit-to-result ms": percentile(run["lat"], 99),
            "events sent": float(run["events"]),
            "orders answered": float(answered),
            "orders failed": float(run["failed"]),
        }

    base = figures(runs["socketio"])
    rows = []
    for name in figures(runs["hean"]) or base:
        row: list[object] = [name]
        for kind in ("hean", "hean-single"):
            value = figures(runs[kind]).get(name, float("nan"))
            row.append(f"{value:.3f}" if value % 1 else f"{value:.0f}")
        baseline = base.get(name, float("nan"))
        row.append(f"{baseline:.3f}" if baseline % 1 else f"{baseline:.0f}")
        ours = figures(runs["hean"]).get(name, float("nan"))
        row.append(f"{ours / baseline:.2f}x" if baseline else "-")
        rows.append(row)
    print_table(
        f"hean.client at {args.rate:g} single orders/s for {args.seconds:g} s (web + engine worker)",
        [
            "figure",
            "hean.client (coalescing)",
            "hean.client (coalesce=False)",
            "baseline: python-socketio",
            "ratio",
        ],
        rows,
    )
    cpu = figures(runs["hean"]).get("client CPU ms/order", float("nan"))
    whole = figures(runs["hean"]).get("process CPU ms/order", float("nan"))
    verdict = "meets" if cpu <= TARGET_CPU_MS else "misses"
    print(
        f"\nhean.client (coalescing) used {cpu:.3f} ms of its own CPU per order: {verdict} the target of "
        f"{TARGET_CPU_MS} ms (issue 14). Its process used {whole:.3f}, the load generator's waits between "
        "orders included."
    )


if __name__ == "__main__":
    main()
