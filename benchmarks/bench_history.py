"""Bounded Redis, durable history: orders at `--rate` per second for `--seconds` (longer than the
dedup window, `--window`, 20 s by default) through web + engine worker + history writer.

Prints, sampled every second: Redis memory (flat once the window is full and the engine's
snapshot, which grows with the client order ids its core remembers up to 100,000, stopped
growing: the median level of each segment within 10%, and the trend; each snapshot write adds
about one snapshot's size for a second, shown apart as the p5-p95 band), the
history writer's lag (age of the oldest entry not in the database) and rows written against
the order rate; then bytes per order in Redis and on disk, the projected 24-hour Redis and disk
footprint, and each process's CPU per 1,000 orders. Baseline in the same run: the journal HEAN
kept before (one hash per command with envelope, ack, started and result, kept 24 hours),
written to a scratch database of the same Redis and measured the same way.

`--per-command 1` (default) sends single `submit_order` commands (the worst case per order),
`--per-command 100` sends `submit_orders` commands of 100 orders. Never fails on speed.

Usage: python benchmarks/bench_history.py [--rate R] [--seconds S] [--window W] [--per-command N]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CpuMeter, print_table, stack

SYMBOL = "BTCUSDT"
DAY_S = 86_400


def load(url: str, token: str, rate: float, seconds: float, per_command: int, out: Any) -> None:
    """The loader (its own process): `rate` orders per second, as commands of `per_command`."""
    try:
        from hean.client import Client

        handles = []
        count = int(rate * seconds / per_command)
        period = per_command / rate
        with Client(url, token, coalesce=False) as client:
            started = time.perf_counter()
            for i in range(count):
                delay = started + i * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if per_command == 1:
                    handles.append(client.submit_order(SYMBOL, "BUY" if i % 2 else "SELL", "0.1"))
                else:
                    orders = [{"symbol": SYMBOL, "side": "BUY" if j % 2 else "SELL", "quantity": "0.1"}
                              for j in range(per_command)]  # fmt: skip
                    handles.append(client.submit_orders(orders))
            sent_s = time.perf_counter() - started
            ok = failed = 0
            reasons: dict[str, int] = {}
            for handle in handles:
                try:
                    handle.wait(120)
                    ok += 1
                except Exception as exc:
                    failed += 1
                    reason = f"{type(exc).__name__}: {exc}"[:160]
                    reasons[reason] = reasons.get(reason, 0) + 1
        out.put({"commands": count, "ok": ok, "failed": failed, "sent_s": sent_s, "reasons": reasons})
    except Exception as exc:  # report it; never hang the benchmark
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def old_journal_bytes(url: str, count: int = 5000) -> float:
    """Redis memory per command of the journal HEAN kept before (measured on database 15)."""
    from urllib.parse import urlsplit

    import redis

    client = redis.Redis.from_url(url)
    other = redis.Redis.from_url(urlsplit(url)._replace(path="/15").geturl())
    other.flushdb()
    before = int(client.info("memory")["used_memory"])
    envelope = (
        '{"request_id":"%s","command":"submit_order","params":{"client_order_id":"%s","symbol":"BTCUSDT",'
        '"side":"BUY","quantity":"0.1","order_type":"MARKET"},"reply_to":"Xk2a9s8d7f6g5h4j3k2l",'
        '"received_at_ms":1764659999123.456}'
    )
    result = (
        '{"request_id":"%s","command":"submit_order","success":true,"result":{"order":{"client_order_id":"%s",'
        '"order_id":123456,"status":"FILLED","reject_reason":null,"filled_quantity":"0.10000000",'
        '"fill_price":"100.00000000","fee":"0.01000000","duplicate":false}},"error":null,"execution_time_ms":0.012}'
    )
    pipe = other.pipeline(transaction=False)
    for _ in range(count):
        rid, cid = uuid.uuid4().hex, uuid.uuid4().hex
        key = "hean:cmd:" + rid
        ack = '{"request_id":"' + rid + '","command":"submit_order","accepted":true,"ack_time_ms":1.234,'
        ack += '"error":null,"duplicate":false}'
        fields = {"envelope": envelope % (rid, cid), "ack": ack, "started": "1764659999.1"}
        fields["result"] = result % (rid, cid)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, DAY_S)
    pipe.execute()
    per = (int(client.info("memory")["used_memory"]) - before) / count
    other.flushdb()
    other.close()
    client.close()
    return per


def database_bytes(system: Any, db: Any) -> int:
    """The database's size on disk (SQLite: the file and its write-ahead log)."""
    if db.dialect.name == "sqlite":
        path = Path(str(db.url.database))
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    import sqlalchemy

    with db.connect() as connection:
        return int(
            connection.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar()
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--window", type=int, default=20, help="HEAN_DEDUP_WINDOW_S for the run")
    parser.add_argument("--per-command", type=int, default=1, choices=(1, 100), help="orders per command")
    args = parser.parse_args()

    import redis
    import sqlalchemy

    from hean.client import Client
    from hean.db import open_database, orders
    from hean.topology import HISTORY_STREAM_KEY

    with stack(["worker-engine", "history", "web"], HEAN_DEDUP_WINDOW_S=str(args.window)) as system:
        with Client(system.url, system.token) as admin:  # a running engine with a market
            if admin.command("stop").wait(60)["state"] == "HALTED":
                admin.command("reset_kill_switch").wait(60)
            limits = {"fee_rate": "0", "max_open_positions": 100_000, "max_orders_per_second": 100_000,
                      "max_leverage": "1000", "max_notional": "1000000"}  # fmt: skip
            admin.command("risk_adjust", limits).wait(60)
            admin.command(
                "update_market", {"symbol": SYMBOL, "bid": "100", "ask": "100", "last": "100"}
            ).wait(60)
            admin.command("start").wait(60)
        client = redis.Redis.from_url(system.redis_url)
        db = open_database(f"sqlite:///{system.home / 'hean.db'}")
        old_bytes = old_journal_bytes(system.redis_url)
        time.sleep(2.0)
        base_memory = int(client.info("memory")["used_memory"])
        base_keys = int(client.dbsize())

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        loader = ctx.Process(
            target=load, args=(system.url, system.token, args.rate, args.seconds, args.per_command, out)
        )
        print(f"... {args.rate:g} orders/s for {args.seconds:g} s, {args.per_command} per command, "
              f"window {args.window} s", flush=True)  # fmt: skip
        loader.start()
        meter = CpuMeter(system.pids())
        started = time.monotonic()
        samples: list[dict[str, float]] = []
        while loader.is_alive() and time.monotonic() - started < args.seconds + 150:
            time.sleep(1.0)
            oldest = client.xrange(HISTORY_STREAM_KEY, count=1)
            lag = time.time() - int(oldest[0][0].decode().split("-")[0]) / 1000.0 if oldest else 0.0
            with db.connect() as connection:
                rows = connection.execute(sqlalchemy.select(sqlalchemy.func.max(orders.c.id))).scalar() or 0
            info = client.info("memory")
            samples.append(
                {"t": time.monotonic() - started, "memory": int(info["used_memory"]),
                 # what Redis holds, without the transient buffers of clients' queries and
                 # replies and of the AOF (a 6 MB snapshot write passes through both)
                 "held": int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))
                 - int(info.get("mem_aof_buffer", 0)),
                 "keys": int(client.dbsize()) - base_keys, "lag": lag, "rows": rows,
                 "queue": int(client.llen("engine")),
                 "dataset": int(client.memory_stats()["dataset.bytes"]),
                 # the engine's snapshot grows with the orders its core remembers (idempotency:
                 # up to 100,000 client order ids), then stays: not the window, counted apart
                 "snapshot": int(client.memory_usage("hean:engine:snapshot") or 0)}
            )  # fmt: skip
            if len(samples) % 5 == 0:
                s = samples[-1]
                print(f"  t={s['t']:.0f}s redis={s['memory'] / 2**20:.1f} MiB keys={s['keys']:.0f} "
                      f"lag={s['lag']:.2f}s orders_in_db={s['rows']:.0f} engine_queue={s['queue']:.0f}",
                      flush=True)  # fmt: skip
        cpu = meter.shares()
        wall = time.monotonic() - started
        sizes = sorted(
            ((client.memory_usage(k) or 0, k.decode()) for k in client.scan_iter(count=1000)), reverse=True
        )[:5]
        listed = ", ".join(f"{name} {size / 1024:.0f} KiB" for size, name in sizes)
        print(f"  largest keys at the end: {listed}")
        loaded = out.get(timeout=60)
        loader.join(30)
        if "error" in loaded:
            print(f"loader failed: {loaded['error']}")
            return
        for reason, count in sorted(loaded.get("reasons", {}).items(), key=lambda kv: -kv[1]):
            print(f"  not answered with a result: {count} x {reason}")
        drained = time.monotonic()
        while client.xlen(HISTORY_STREAM_KEY) and time.monotonic() - drained < 120:
            time.sleep(0.2)
        with db.connect() as connection:
            written = connection.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(orders)
            ).scalar()
        disk = database_bytes(system, db)
        sample_key = next(iter(client.scan_iter("hean:cmd:*", count=1000)), None)
        key_usage = client.memory_usage(sample_key) if sample_key else None
        # bytes per window key: the memory the compact keys hold, measured as they expire
        time.sleep(1.0)
        full_memory, full_keys = int(client.info("memory")["used_memory"]), int(client.dbsize())
        time.sleep(args.window + 3)
        empty_memory, empty_keys = int(client.info("memory")["used_memory"]), int(client.dbsize())
        db.dispose()

    orders_sent = loaded["commands"] * args.per_command
    rate = orders_sent / loaded["sent_s"]
    # after the window filled and the engine's snapshot stopped growing (its core remembers at
    # most 100,000 client order ids: 100 s at 1,000 orders/s), while orders were sent (and kept
    # up with: the engine queue short)
    full_snapshot = 0.98 * max((s["snapshot"] for s in samples), default=0)
    settled = next((s["t"] for s in samples if s["snapshot"] >= full_snapshot), float("inf"))
    steady_from = max(args.window + 5, settled)
    steady = [s for s in samples if steady_from <= s["t"] <= loaded["sent_s"] and s["queue"] < 100]
    raw_memory = [s["memory"] for s in steady]
    memory = [s["memory"] - s["snapshot"] for s in steady]
    spread = (max(memory) - min(memory)) / statistics.fmean(memory) if memory else float("nan")
    # what an operator sees (INFO used_memory, the snapshot included), robust to a second's
    # burst of in-flight messages: the 5th to 95th percentile band around the median
    total = sorted(raw_memory)
    band = (
        (total[int(0.95 * (len(total) - 1))] - total[int(0.05 * (len(total) - 1))]) / statistics.median(total)
        if total
        else float("nan")
    )
    held = sorted(s["held"] for s in steady)
    held_band = (
        (held[int(0.95 * (len(held) - 1))] - held[int(0.05 * (len(held) - 1))]) / statistics.median(held)
        if held
        else float("nan")
    )
    held_series = [s["held"] for s in steady]
    # the level: each segment's median (a snapshot write adds about one snapshot's size for a
    # second, every HEAN_SNAPSHOT_INTERVAL_S; the level is what stays)
    segment_s = max(10.0, args.window)
    segments: dict[int, list[int]] = {}
    for sample in steady:
        segments.setdefault(int((sample["t"] - steady_from) // segment_s), []).append(sample["memory"])
    levels = [statistics.median(v) for v in segments.values() if len(v) >= segment_s / 2]
    level_spread = (max(levels) - min(levels)) / statistics.median(levels) if levels else float("nan")
    third_total = max(1, len(raw_memory) // 3)
    held_trend = (
        statistics.fmean(held_series[-third_total:]) / statistics.fmean(held_series[:third_total]) - 1
        if held_series
        else float("nan")
    )
    total_trend = (
        statistics.fmean(raw_memory[-third_total:]) / statistics.fmean(raw_memory[:third_total]) - 1
        if raw_memory
        else float("nan")
    )
    dataset = [s["dataset"] for s in steady]
    data_spread = (max(dataset) - min(dataset)) / statistics.fmean(dataset) if dataset else float("nan")
    # the trend: the last third of the steady part against the first third
    third = max(1, len(memory) // 3)
    trend = (
        (statistics.fmean(memory[-third:]) / statistics.fmean(memory[:third]) - 1) if memory else float("nan")
    )
    # what the keys hold, the engine's snapshot set apart: the window, in-flight messages, streams
    keyed = [s["dataset"] - s["snapshot"] for s in steady]
    keyed_spread = (max(keyed) - min(keyed)) / statistics.fmean(keyed) if keyed else float("nan")
    keyed_trend = (
        (statistics.fmean(keyed[-third:]) / statistics.fmean(keyed[:third]) - 1) if keyed else float("nan")
    )
    keys = statistics.fmean(s["keys"] for s in steady) if steady else float("nan")
    expired = full_keys - empty_keys
    per_key = (full_memory - empty_memory) / expired if expired > 0 else float("nan")
    per_order = per_key / args.per_command
    lags = sorted(s["lag"] for s in samples if s["t"] <= loaded["sent_s"])
    rows_rate = [
        (b["rows"] - a["rows"]) / (b["t"] - a["t"]) for a, b in itertools.pairwise(samples)
        if b["t"] <= loaded["sent_s"] and a["t"] >= 5
    ]  # fmt: skip
    disk_per_order = disk / max(1, written)
    old_per_order = old_bytes / args.per_command
    cpu_per_1000 = {name: 1000 * share / 100 * wall / max(1, loaded["ok"] * args.per_command)
                    for name, share in cpu.items()}  # fmt: skip

    rows: list[list[object]] = [
        ["orders sent / answered", f"{orders_sent} / {loaded['ok'] * args.per_command}", "", ""],
        ["order rate achieved (per s)", f"{rate:.0f}", "", ""],
        ["steady part: from (s) / samples", f"{steady_from:.0f} / {len(steady)}",
         "after the window and the engine snapshot's growth", ""],
        ["Redis used memory, steady (MiB)",
         f"{min(raw_memory) / 2**20:.1f}-{max(raw_memory) / 2**20:.1f}" if memory else "-", "", ""],
        [f"  its level: medians of {segment_s:.0f} s segments (MiB)",
         " ".join(f"{v / 2**20:.1f}" for v in levels) + f"; spread {100 * level_spread:.1f}%",
         "flat: spread <= 10%", "flat" if level_spread <= 0.10 else "NOT flat"],
        ["  its p5-p95 band around the median", f"{100 * band:.1f}%", "(snapshot writes: transient)", ""],
        ["  its trend: last third vs first third", f"{100 * total_trend:+.1f}%", "flat: within 10%",
         "flat" if abs(total_trend) <= 0.10 else "NOT flat"],
        ["  held (without client and AOF buffers; MiB)",
         f"{min(held) / 2**20:.1f}-{max(held) / 2**20:.1f}" if held else "-", "", ""],
        ["    its p5-p95 band around the median", f"{100 * held_band:.1f}%", "", ""],
        ["    its trend: last third vs first third", f"{100 * held_trend:+.1f}%", "flat: within 10%",
         "flat" if abs(held_trend) <= 0.10 else "NOT flat"],
        ["  without the engine's snapshot (MiB)",
         f"{min(memory) / 2**20:.1f}-{max(memory) / 2**20:.1f}" if memory else "-", "", ""],
        ["  its spread (min to max)", f"{100 * spread:.1f}%", "", ""],
        ["  its trend: last third vs first third", f"{100 * trend:+.1f}%", "", ""],
        ["  keys' data without the snapshot (window, in flight)",
         f"{min(keyed) / 2**20:.2f}-{max(keyed) / 2**20:.2f} MiB, spread {100 * keyed_spread:.1f}%, "
         f"trend {100 * keyed_trend:+.1f}%" if keyed else "-", "", ""],
        ["  keys' data only (MEMORY STATS dataset)",
         f"{min(dataset) / 2**20:.2f}-{max(dataset) / 2**20:.2f} MiB, spread {100 * data_spread:.1f}%"
         if dataset else "-", "", ""],
        ["keys in the window (mean)", f"{keys:.0f}",
         f"rate x window = {rate * args.window / args.per_command:.0f}", ""],
        ["Redis bytes per order (window)", f"{per_order:.0f} ({expired} keys expiring)",
         f"before: {old_per_order:.0f}", f"{per_order / old_per_order:.2f}x"],
        ["MEMORY USAGE of one window key (B)", f"{key_usage}", "target <= 200 per order", ""],
        ["writer lag p50 / max (s)", f"{lags[len(lags) // 2]:.2f} / {lags[-1]:.2f}" if lags else "-", "", ""],
        ["order rows written per s (mean)", f"{statistics.fmean(rows_rate):.0f}" if rows_rate else "-",
         f"order rate {rate:.0f}", ""],
        ["orders in the database", f"{written}", f"sent {orders_sent}", ""],
        ["disk bytes per order (SQLite)", f"{disk_per_order:.0f}", "", ""],
        ["24 h Redis at this rate", f"{(base_memory + per_order * rate * args.window) / 2**30:.2f} GiB "
         f"(window {args.window} s); {(base_memory + per_order * rate * 600) / 2**30:.2f} GiB at 600 s",
         f"before: {old_per_order * rate * DAY_S / 2**30:.1f} GiB", ""],
        ["24 h disk at this rate", f"{disk_per_order * rate * DAY_S / 2**30:.1f} GiB", "", ""],
    ]  # fmt: skip
    for name, value in cpu_per_1000.items():
        rows.append([f"CPU s per 1,000 orders: {name}", f"{value:.3f}", "", ""])
    print_table(
        f"History at {args.rate:g} orders/s ({args.per_command} per command), window {args.window} s",
        ["figure", "HEAN", "baseline / bar", "verdict"],
        rows,
    )


if __name__ == "__main__":
    main()
