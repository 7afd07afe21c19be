"""The history's retention (hean/retention.py) against the writes it follows, in one run, on a
fresh SQLite file (or DATABASE_URL): for single-order commands and 100-order commands,

1. the history writer's write of N orders (`HistoryStore.write`, batches of 500 stream entries
   like its reads), all executed three days ago;
2. a retention pass that deletes them all (`hean.retention.prune`, 2,000 rows of each table a
   chunk);
3. the same write again, of new orders, into the pages the pass freed.

Prints CPU microseconds per order of each step, the pass against the first write, the chunks'
wall time (each a transaction the writer's batches wait for), and the file's size after each
step: the second write should fill the freed pages, not grow the file.

Then the history writer itself (`python -m hean.history` with HEAN_HISTORY_KEEP_DAYS=1, a private
Redis, nothing arriving) on a fresh SQLite file holding `--writer-orders` (300,000) single-order
commands three days old: how many orders (with their fills and commands) its first pass deletes
a second. Never fails on speed.

    .venv/bin/python benchmarks/bench_retention.py [--orders N] [--shapes 1,100] [--writer-orders N]

`--make-history PATH` only writes `--orders` single-order commands three days old into the SQLite
file PATH and stops: a history to turn the retention on over under load, e.g.
`DATABASE_URL=sqlite:///PATH HEAN_HISTORY_KEEP_DAYS=1 benchmarks/bench_soak.py --minutes 3`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from history_entries import History  # noqa: E402 (the tests' builder of stream entries)

from hean.db import open_database, sqlite_file  # noqa: E402
from hean.history import READ_ENTRIES, HistoryStore  # noqa: E402
from hean.retention import CHUNK, Pruned, count_old, prune  # noqa: E402

DAY = 86400.0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def size_mb(path: str | None) -> float:
    """The SQLite file and its log, in MB (0 for another database)."""
    if path is None:
        return 0.0
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 1e6


def write(store: HistoryStore, per_command: int, orders: int, at: float) -> float:
    """Writes `orders` orders in commands of `per_command`; returns the CPU seconds it took
    (building the entries not counted)."""
    history, used = History(), 0.0
    commands = orders // per_command
    for start in range(0, commands, READ_ENTRIES // 2):  # two entries a command: 500 a batch
        for i in range(start, min(commands, start + READ_ENTRIES // 2)):
            history.command(at + i * 0.001, orders_per_command=per_command)
        entries = history.take()
        before = cpu()
        store.write(entries)
        used += cpu() - before
    return used


def run(url: str, per_command: int, orders: int) -> None:
    db = open_database(url)
    store = HistoryStore(db)
    path = sqlite_file(db)
    now = time.time()
    print(f"\n{orders:,} orders in {per_command}-order commands ({url.split('://')[0]})", flush=True)

    first = write(store, per_command, orders, now - 3 * DAY)
    after_first = size_mb(path)
    chunks, walls, deleted = 0, [], Pruned()
    before = cpu()
    passing = prune(db, now - DAY, CHUNK)
    while True:
        started = time.perf_counter()
        done = next(passing, None)
        if done is None:
            break
        walls.append((time.perf_counter() - started) * 1000.0)
        chunks, deleted = chunks + 1, deleted + done
    pruned = cpu() - before
    after_prune = size_mb(path)
    second = write(store, per_command, orders, now - 60)
    after_second = size_mb(path)
    db.dispose()

    walls.sort()
    print(f"  write:       {first / orders * 1e6:6.1f} us per order; file {after_first:7.1f} MB")
    print(
        f"  pass:        {pruned / orders * 1e6:6.1f} us per order ({pruned / first:.2f}x the write); "
        f"{deleted} in {chunks} chunks, wall per chunk p50 {statistics.median(walls):.0f} ms, "
        f"max {walls[-1]:.0f} ms; file {after_prune:7.1f} MB"
    )
    grew = after_second - after_prune
    print(
        f"  write again: {second / orders * 1e6:6.1f} us per order; file {after_second:7.1f} MB "
        f"(grew {grew:.1f} MB against {after_first:.1f} MB for the first write)"
    )


def writer_pass(orders: int, directory: str, seconds: float = 15.0) -> None:
    """The history writer's first pass over `orders` old single orders, nothing else arriving."""
    from _harness import Stack

    url = f"sqlite:///{directory}/writer.db"
    db = open_database(url)
    write(HistoryStore(db), 1, orders, time.time() - 3 * DAY)
    cutoff = time.time() - DAY

    def old() -> int:
        return count_old(db, cutoff).orders

    print(f"\nthe history writer's first pass over {orders:,} single orders, nothing arriving", flush=True)
    system = Stack(["history"], DATABASE_URL=url, HEAN_HISTORY_KEEP_DAYS="1")
    try:
        started, before = time.monotonic(), old()
        deadline = started + seconds
        while time.monotonic() < deadline and old():
            time.sleep(0.5)
        elapsed, left = time.monotonic() - started, old()
    finally:
        system.close()
        db.dispose()
    rate = (before - left) / elapsed
    print(
        f"  {before - left:,} orders with their fills and commands deleted in {elapsed:.1f} s:"
        f" {rate:,.0f} a second"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=100_000, help="orders per write (default 100,000)")
    parser.add_argument("--shapes", default="1,100", help="orders per command, comma-separated")
    parser.add_argument(
        "--writer-orders", type=int, default=300_000, help="old orders for the writer's pass (0: skip it)"
    )
    parser.add_argument("--make-history", metavar="PATH", help="only write --orders old orders into PATH")
    args = parser.parse_args()
    if args.make_history:
        db = open_database(f"sqlite:///{Path(args.make_history).resolve()}")
        used = write(HistoryStore(db), 1, args.orders, time.time() - 3 * DAY)
        db.dispose()
        print(
            f"{args.orders:,} single orders three days old written to {args.make_history}"
            f" ({used:.0f} s of CPU)"
        )
        return
    for shape in (int(s) for s in args.shapes.split(",") if s.strip()):
        with tempfile.TemporaryDirectory(prefix="bench-retention-") as directory:
            run(os.environ.get("DATABASE_URL") or f"sqlite:///{directory}/history.db", shape, args.orders)
    if args.writer_orders:
        with tempfile.TemporaryDirectory(prefix="bench-retention-") as directory:
            writer_pass(args.writer_orders, directory)


if __name__ == "__main__":
    main()
