"""Ack round trip: a raw Flask-SocketIO echo (the floor), HEAN `command` idle, and HEAN
`command` while 1,000 orders/s flow through the whole system. Prints p50 / p99 / max.

Targets (issue 6): p99 under 5 ms under load, and idle within 1.5x of the raw floor.
Usage: python benchmarks/bench_ack.py [--samples N] [--load-seconds S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO_ROOT, percentile, print_table, stack

from hean.redis_server import free_port


def measure(client: socketio.Client, payload: Any, samples: int) -> list[float]:
    """Round-trip times in ms of `command` calls, after a warm-up."""
    times = []
    for i in range(samples + 200):
        body = payload() if callable(payload) else payload
        started = time.perf_counter()
        reply = client.call("command", body, timeout=10)
        elapsed = (time.perf_counter() - started) * 1000.0
        if i >= 200:
            times.append(elapsed)
        if isinstance(reply, dict) and reply.get("accepted") is False:
            raise RuntimeError(f"command refused: {reply}")
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


def load(url: str, token: str, rate: int, seconds: float, out: Any) -> None:
    """Send `rate` orders/s for `seconds` on its own connection; report sent, acked, results."""
    client = socketio.Client()
    results = 0
    lock = threading.Lock()
    acked = [0]

    def on_result(_: Any) -> None:
        nonlocal results
        with lock:
            results += 1

    refused: Counter[str] = Counter()

    def on_ack(reply: Any) -> None:
        with lock:
            if isinstance(reply, dict) and reply.get("accepted"):
                acked[0] += 1
            else:
                refused[str((reply or {}).get("error", {}).get("code"))] += 1

    client.on("command_result", on_result)
    client.connect(url, auth={"token": token}, transports=["websocket"])
    prefix = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        target = started + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.emit("command", order(i, prefix), callback=on_ack)
    sent_for = time.perf_counter() - started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and results < total:
        time.sleep(0.05)
    drained = time.perf_counter() - started
    client.disconnect()
    out.put(
        {
            "sent": total,
            "acked": acked[0],
            "refused": dict(refused),
            "results": results,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()

    with stack(["worker-engine", "worker-llm", "web"], HEAN_COMMAND_RATE="100000") as system:
        echo_port = free_port()
        system.spawn(
            "echo", [sys.executable, str(REPO_ROOT / "benchmarks" / "echo_server.py"), str(echo_port)]
        )
        from _harness import wait_http

        wait_http(f"http://127.0.0.1:{echo_port}/socket.io/?EIO=4&transport=polling")

        floor_client = socketio.Client()
        floor_client.connect(f"http://127.0.0.1:{echo_port}", transports=["websocket"])
        floor = measure(floor_client, {"command": "stop", "params": {}, "request_id": "x"}, args.samples)
        floor_client.disconnect()

        client = socketio.Client()
        client.connect(system.url, auth={"token": system.token}, transports=["websocket"])
        for setup in (
            {
                "command": "update_market",
                "params": {"symbol": "BTCUSDT", "bid": "50000", "ask": "50001", "last": "50000.5"},
            },
            {"command": "start", "params": {}},
        ):
            client.call("command", setup, timeout=10)
        prefix = uuid.uuid4().hex[:8]
        counter = iter(range(10**9))
        idle = measure(client, lambda: order(next(counter), "idle" + prefix), args.samples)

        out: Any = mp.get_context("spawn").Queue()
        loader = mp.get_context("spawn").Process(
            target=load, args=(system.url, system.token, args.rate, args.load_seconds, out)
        )
        loader.start()
        time.sleep(1.0)  # let the load reach its rate
        loaded: list[float] = []
        until = time.perf_counter() + args.load_seconds - 2.0
        while time.perf_counter() < until:
            loaded += measure(client, lambda: order(next(counter), "load" + prefix), 200)
        stats = out.get(timeout=180)
        loader.join()
        client.disconnect()

    floor_p99 = percentile(floor, 99)
    print_table(
        "Ack round trip (ms), client -> web -> broker publish -> ack, python-socketio client on loopback",
        ["scenario", "n", "p50", "p99", "max", "p99 vs floor"],
        [
            row("raw Flask-SocketIO echo (floor)", floor, None),
            row("HEAN command, idle", idle, floor_p99),
            row(f"HEAN command, {args.rate} orders/s flowing", loaded, floor_p99),
        ],
    )
    lost = stats["sent"] - stats["results"]
    print(
        f"\nload: sent {stats['sent']} orders in {stats['send_s']:.1f} s "
        f"({stats['sent'] / stats['send_s']:.0f}/s), acked {stats['acked']}, "
        f"refused {stats['refused']}, results {stats['results']} after {stats['drain_s']:.1f} s, "
        f"lost {lost}"
    )
    print(
        f"targets: p99 under load {percentile(loaded, 99):.2f} ms (target < 5 ms); "
        f"idle p99 / floor p99 = {percentile(idle, 99) / floor_p99:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
