"""The engine worker's batch path alone, in this process, on a private Redis: CPU per batch of
K single-order commands (K = 1, 2, 6, 25, 100) and for one 100-order `submit_orders` command,
beside a floor measured in the same run on the same Redis. Why issue 14 item 3's 50 us per
single-order event is out of reach at the batch sizes 1,000 orders/s gives, in numbers.

HEAN: `workers.engine._run_batch`, exactly what a delivered batch runs (the take that marks the
commands started and reads what ran before, the handlers, the commit of the log, the results
and the published packets in one MULTI, fenced by the shard's lease as the worker's are). Not
counted: Celery's delivery, the state publisher and snapshots (off here), and the web's
reservation (made before timing, as the web does). Beside it, in turns, the same without the
lease's fence (workers.shard_owner.Fence): what the fence costs.

Floor: the least a durable batch of the same commands does on this stack (redis-py + hiredis,
the core's columns, orjson): one round trip that marks the commands started and reads their
earlier results, the orders applied in one core call, one JSON per result, and one MULTI with
the log entry, the results and one published message. Two of them: with one key per command,
as HEAN's journal keeps its window (each key expires on its own), and with every command of the
batch in one hash (one Redis command for all, whatever the batch's size).

CPU is this process's (every thread), the median over rounds taken in turns, per batch and per
order; a straight line through the sizes gives each side's fixed cost per batch and its cost
per order, and from them the orders a batch needs for 50 us per order. Prints tables; never
fails on speed.

    .venv/bin/python benchmarks/bench_batch.py [--rounds 7] [--batches 40] [--gap-ms 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from hean.redis_server import PrivateRedis  # noqa: E402

SIZES = (1, 2, 6, 25, 100)
TARGET_US_PER_ORDER = 50.0
SYMBOL = "BTC/USDT"


def order(tag: str, i: int) -> dict[str, Any]:
    return {
        "client_order_id": f"{tag}-{i}",
        "symbol": SYMBOL,
        "side": "BUY" if i % 2 else "SELL",
        "quantity": "0.001",
    }


class Bench:
    """The engine worker's modules, imported once the settings point at the private Redis."""

    def __init__(self, url: str, home: str) -> None:
        os.environ.update(
            REDIS_URL=url,
            HEAN_HOME=home,
            HEAN_ENGINE_LINGER_MS="0",  # no group-commit wait: batches run back to back
            HEAN_SNAPSHOT_INTERVAL_S="3600",
            HEAN_LOG_LEVEL="warning",
        )
        from hean.config import get_settings

        get_settings.cache_clear()
        from hean.celery_wire import batch_frame
        from hean.command_journal import CommandJournal
        from hean.engine import TradingEngine
        from hean.redis_client import sync_client
        from hean.topology import BATCH_TASKS, ENGINE_QUEUE
        from workers import engine as engine_tasks
        from workers.app import app

        self.client = sync_client()
        self.journal = CommandJournal(self.client)
        self.frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], "bench-batch-scratch", "batch-1", "x")
        engine_tasks.hold_the_shard()  # as the worker does before it consumes: its commits fenced
        self.run_batch: Callable[[list[dict[str, Any]]], int] = engine_tasks._run_batch
        hooks = engine_tasks.SHARD.hooks

        def unfenced(envelopes: list[dict[str, Any]]) -> int:
            fence, hooks.fence = hooks.fence, None
            try:
                return engine_tasks._run_batch(envelopes)
            finally:
                hooks.fence = fence

        self.run_unfenced = unfenced
        self.seq = 0
        setup = [
            ("risk_adjust", {"fee_rate": "0", "max_orders_per_second": 0, "max_open_orders": 1_000_000}),
            ("update_market", {"symbol": SYMBOL, "bid": "50000", "ask": "50001", "last": "50000.5"}),
            ("start", {}),
        ]
        self.run_batch(self.reserved(setup))
        self.floor_engine = TradingEngine()
        self.floor_engine.set_risk_limits(dict(setup[0][1]))
        self.floor_engine.update_market(**setup[1][1])
        self.floor_engine.start()

    def reserved(self, commands: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The envelopes of `commands`, reserved in the journal as the web reserves them."""
        from hean.messages import envelope_json

        items = []
        for name, params in commands:
            self.seq += 1
            rid = f"bb-{os.getpid()}-{self.seq}"
            encoded = envelope_json(rid, name, json.dumps(params), "sid-bench", time.time() * 1e3)
            items.append((rid, name, encoded))
        self.journal.reserve_and_enqueue(items, "bench-batch-scratch", self.frame)
        self.client.delete("bench-batch-scratch")
        return [json.loads(envelope) for _, _, envelope in items]

    def floor_batch(self, envelopes: list[dict[str, Any]], one_hash: bool = False) -> None:
        """The least work for the same batch: see the module's docstring."""
        from hean.engine import orders_from_params

        ids = [e["request_id"] for e in envelopes]
        pipe = self.client.pipeline(transaction=False)
        if one_hash:
            pipe.hmget("bench:floor:window", [f"{rid}:r" for rid in ids])
            pipe.hset("bench:floor:window", mapping={f"{rid}:s": time.time() for rid in ids})
        else:
            for rid in ids:
                pipe.hset(f"bench:floor:{rid}", "s", time.time())
                pipe.hget(f"bench:floor:{rid}", "r")
        pipe.execute()
        orders = [o for e in envelopes for o in e["params"].get("orders", [e["params"]])]
        columns = orders_from_params(orders)
        result = self.floor_engine.submit_batch(columns, now_ns=time.time_ns())
        if len(envelopes) == 1 and "orders" in envelopes[0]["params"]:
            results = [result.results_json()]
        else:
            results = [result.result_json(i) for i in range(result.count)]
        encoded = [
            orjson.dumps({"request_id": rid, "success": True, "result": orjson.Fragment(r)})
            for rid, r in zip(ids, results, strict=True)
        ]
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd("bench:floor:log", {"cmd": "submit_orders", "columns": columns.to_bytes()}, maxlen=1000)
        if one_hash:
            window = {f"{rid}:r": line for rid, line in zip(ids, encoded, strict=True)}
            pipe.hset("bench:floor:window", mapping=window)
        else:
            for rid, line in zip(ids, encoded, strict=True):
                pipe.hset(f"bench:floor:{rid}", "r", line)
        pipe.xadd("bench:floor:history", {"r": b"\n".join(encoded)}, maxlen=1000)
        pipe.publish("bench:floor:results", orjson.dumps([orjson.Fragment(line) for line in encoded]))
        pipe.execute()

    def floor_one_hash(self, envelopes: list[dict[str, Any]]) -> None:
        self.floor_batch(envelopes, one_hash=True)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares: CPU per batch = fixed + per_order * K."""
    slope, intercept = statistics.linear_regression([k for k, _ in points], [us for _, us in points])
    return intercept, slope


Commands = Callable[[str], list[tuple[str, dict[str, Any]]]]


def measure(bench: Bench, commands: Commands, rounds: int, batches: int, gap_s: float = 0.0) -> list[float]:
    """HEAN's and the two floors' CPU per batch (us) for batches of `commands(tag)`, on fresh
    request ids and client order ids for every batch: the median over `rounds`, each side's
    rounds taken in turns (this machine's speed drifts within a run). With `gap_s`, each batch
    runs after that long asleep, as under `hean up` (not counted: CPU time)."""
    runs = (bench.run_batch, bench.floor_batch, bench.floor_one_hash, bench.run_unfenced)
    prepared = [
        [bench.reserved(commands(f"{side}{bench.seq}-{b}")) for b in range(rounds * batches + 5)]
        for side in range(len(runs))
    ]
    for run, side_batches in zip(runs, prepared, strict=True):
        for batch in side_batches[:5]:  # warm
            run(batch)
    samples: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for side, run in enumerate(runs):
            chunk = prepared[side][5 + r * batches : 5 + (r + 1) * batches]
            start = time.process_time()
            for batch in chunk:
                if gap_s:
                    time.sleep(gap_s)
                run(batch)
            samples[side].append((time.process_time() - start) / len(chunk) * 1e6)
    return [statistics.median(side) for side in samples]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=40, help="batches per round and size")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="sleep this long before each batch, as the engine worker lingers between batches "
        "under `hean up` (4 ms by default; 0: back to back)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches take 1 or more")
    if not 0 <= args.gap_ms <= 1000:
        parser.error("--gap-ms takes 0 to 1000")
    home = tempfile.mkdtemp(prefix="hean-bench-batch-")
    server = PrivateRedis(Path(home) / "redis")  # appendfsync always, as `hean up` runs it
    url = server.start()
    rows: list[list[object]] = []
    names = ("HEAN", "floor, a key per command", "floor, one hash", "HEAN without the lease's fence")
    points: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    try:
        bench = Bench(url, home)

        def row(label: str, orders: int, cpu: list[float]) -> list[object]:
            cells: list[object] = [label]
            for us in cpu[:3]:
                cells += [f"{us:,.0f}", f"{us / orders:,.1f}"]
            cells.append(f"{cpu[3]:,.0f}")
            return [*cells, f"{cpu[0] / cpu[1]:.2f}x", f"{cpu[0] / cpu[2]:.2f}x", f"{cpu[0] / cpu[3]:.2f}x"]

        for k in SIZES:
            print(f"  {k} single-order command(s) per batch ...", flush=True)
            singles: Commands = lambda tag, k=k: [("submit_order", order(tag, i)) for i in range(k)]  # noqa: E731
            cpu = measure(bench, singles, args.rounds, args.batches, args.gap_ms / 1e3)
            for name, us in zip(names, cpu, strict=True):
                points[name].append((k, us))
            rows.append(row(f"{k} x submit_order", k, cpu))
        print("  one 100-order submit_orders command per batch ...", flush=True)
        cpu = measure(
            bench,
            lambda tag: [("submit_orders", {"orders": [order(tag, i) for i in range(100)]})],
            args.rounds,
            args.batches,
            args.gap_ms / 1e3,
        )
        rows.append(row("1 x submit_orders (100)", 100, cpu))
    finally:
        server.stop()
        if os.environ.get("HEAN_BENCH_KEEP"):
            print(f"kept {home} (Redis data, database)", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    from _harness import print_table

    print_table(
        "the engine worker's batch path, CPU per batch (this process, every thread; median of rounds"
        + (f"; {args.gap_ms:g} ms asleep before each)" if args.gap_ms else "; back to back)"),
        [
            "batch",
            "HEAN us/batch",
            "/order",
            "floor (keys) us/batch",
            "/order",
            "floor (one hash) us/batch",
            "/order",
            "HEAN unfenced us/batch",
            "HEAN / keys",
            "HEAN / one hash",
            "HEAN / without the fence",
        ],
        rows,
    )
    print()
    for name, measured in points.items():
        fixed, per_order = fit(measured)
        spare = TARGET_US_PER_ORDER - per_order
        needed = f"{fixed / spare:,.0f}" if spare > 0 else "no number of"
        print(
            f"  {name}: {fixed:,.0f} us per batch + {per_order:,.1f} us per single-order command; "
            f"{TARGET_US_PER_ORDER:.0f} us per order needs {needed} orders per batch "
            "(at 1,000 orders/s, one batch every that many ms)"
        )
    print("  (under `hean up`, Celery's delivery, the state publisher and snapshots come on top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
