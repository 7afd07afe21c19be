"""What durable acks cost: ack latency and command throughput with acks sent once the command is
on disk (the default: the private Redis under `appendfsync always`, so every write is fsynced
before its reply, and WAITAOF after each batch's reserve script), against acks sent without
waiting under `appendfsync everysec` (a crash of the machine may then lose up to a second of
acked commands), and against WAITAOF under everysec, which is what HEAN did before: Valkey 9.1
answers it before any fsync (hean.redis_client.Durability), so it costs the round trip and
buys nothing against a power loss.

Each mode runs the same system (web, engine worker, default worker, private Redis) in turn:
- idle ack round trip: one `submit_order` at a time, each sent once the previous one's result
  is in (p50 / p99 over --samples);
- throughput: --window commands kept in flight on one connection for --seconds: acks/s.
Prints a table with the ratio of each mode to the unsynced one; never fails on speed.

    .venv/bin/python benchmarks/bench_durability.py [--samples N] [--seconds S] [--window W]
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import redis
from _harness import RawSocketIO, percentile, print_table, stack, trading_client
from bench_ack import measure, order

MODES = (
    # (name, HEAN_ACK_FSYNC, Redis appendfsync)
    ("acks not synced (appendfsync everysec)", "off", "everysec"),
    ("WAITAOF under everysec (answered before the fsync)", "on", "everysec"),
    ("appendfsync always + WAITAOF (the default)", "on", "always"),
)


def throughput(client: RawSocketIO, seconds: float, window: int) -> tuple[float, int]:
    """Acks/s with `window` commands in flight, and how many were refused."""
    prefix = uuid.uuid4().hex[:8]
    sent = acked = refused = 0
    in_flight = 0
    started = time.perf_counter()
    until = started + seconds
    while True:
        now = time.perf_counter()
        while in_flight < window and now < until:
            client.send("command", order(sent, "tp" + prefix))
            sent += 1
            in_flight += 1
        if in_flight == 0:
            break
        kind, _, payload = client.recv()
        if kind != "ack":
            continue
        in_flight -= 1
        if isinstance(payload, dict) and payload.get("accepted"):
            acked += 1
        else:
            refused += 1
    return acked / (time.perf_counter() - started), refused


def run_mode(args: argparse.Namespace, fsync: str, appendfsync: str) -> dict[str, Any]:
    env = {"HEAN_COMMAND_RATE": "100000", "HEAN_COMMAND_BURST": "100000", "HEAN_ACK_FSYNC": fsync}
    with stack(["worker-engine", "worker-llm", "web"], **env) as system:
        redis.Redis.from_url(system.redis_url).config_set("appendfsync", appendfsync)
        client = trading_client(system)
        prefix = uuid.uuid4().hex[:8]
        counter = iter(range(10**9))
        idle = measure(client, lambda: order(next(counter), "idle" + prefix), args.samples, settle=True)
        rate, refused = throughput(client, args.seconds, args.window)
        client.close()
    return {"idle": idle, "rate": rate, "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=200, help="commands in flight for throughput")
    args = parser.parse_args()
    results = {name: run_mode(args, fsync, appendfsync) for name, fsync, appendfsync in MODES}
    base = results[MODES[0][0]]
    rows = []
    for name, _, _ in MODES:
        m = results[name]
        p50, p99 = percentile(m["idle"], 50), percentile(m["idle"], 99)
        rows.append(
            [
                name,
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{p99 / percentile(base['idle'], 99):.2f}x",
                f"{m['rate']:.0f}",
                f"{m['rate'] / base['rate']:.2f}x",
                m["refused"],
            ]
        )
    print_table(
        "durable acks: idle ack round trip (ms) and single-order command throughput, per mode",
        ["mode", "ack p50", "ack p99", "p99 vs unsynced", "acks/s", "vs unsynced", "refused"],
        rows,
    )


if __name__ == "__main__":
    main()
