"""A rewrite of the private Redis's append-only file under 1,000 single orders/s: what it does to
submit-to-result latency, as `hean up` runs the server and with each of its two helpers off.

The variants, run in turns (`--rounds`, 2):
- `hean`: as `hean up` runs it: the deleted AOF freed 16 MB a step (hean.gradual_free) and the
  AOF's pages dropped from the page cache once on disk (hean.page_cache);
- `at-once`: the deleted AOF freed at once, as the server closes it;
- `no-trim`: the AOF's pages left in the page cache (HEAN_DROP_WRITTEN_PAGES=false).

Each round starts a private Redis with the web process, the engine worker and the history writer
(benchmarks/_harness.Stack), stores `--keys` keys (600,000: about the 80 MB of data of a long
run at this rate) and rewrites them into the AOF's base, then writes `--aof-mb` (1,000) over one
key with automatic rewrites off, so that the AOF's increment holds a gigabyte, as it does when
an automatic rewrite starts (`auto-aof-rewrite-min-size`, 1 GB). Then the soak's loader
(bench_soak.loader) sends 1,000 single orders/s for `--seconds` (30), and at `--rewrite-at` (10 s)
the benchmark asks for a rewrite: a new base written by a child process, and the gigabyte file
deleted.

Prints each 2 s interval (sent, answered, p50 / p99 / worst in ms, whether the rewrite ran),
then per variant and round: the worst result and p99 in the intervals the rewrite touched (from
the request until two intervals after it finished, which covers the freeing), the worst
elsewhere, and Redis's latency monitor (its slowest fsync: the disk's own stalls show there).
Never fails on speed; exits 1 if an order went unanswered.

    .venv/bin/python benchmarks/bench_rewrite.py [--rounds N] [--variants hean,at-once,no-trim]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis
from _harness import RedisStalls, Stack, open_for_orders, percentile, print_table
from bench_soak import loader

#: PrivateRedis's options per variant.
VARIANTS: dict[str, dict[str, Any]] = {
    "hean": {},
    "at-once": {"free_gradually": False},
    "no-trim": {"drop_written_pages": False},
}
INTERVAL_S = 2.0


@dataclass
class Round:
    variant: str
    worst_rewrite: float = 0.0
    p99_rewrite: float = 0.0
    worst_elsewhere: float = 0.0
    slowest_fsync_ms: int = 0
    unanswered: int = 0
    stalls: str = ""


def fill(client: redis.Redis, keys: int, aof_mb: int) -> None:
    """`keys` keys rewritten into the AOF's base, then `aof_mb` MB more of AOF increment."""
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"filler:{i}", "x" * 80)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    rewrite_and_wait(client)
    client.config_set("auto-aof-rewrite-percentage", 0)  # the benchmark says when
    blob = b"y" * 2**20
    for _ in range(aof_mb):
        client.set("bench:aof-filler", blob)
    client.delete("bench:aof-filler")


def rewrite_and_wait(client: redis.Redis) -> None:
    client.bgrewriteaof()
    time.sleep(0.5)
    while client.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.2)


def run_round(variant: str, args: argparse.Namespace) -> Round:
    result = Round(variant)
    system = Stack(
        ["worker-engine", "web", "history"], redis_options=VARIANTS[variant], HEAN_COMMAND_RATE="1000000"
    )
    try:
        open_for_orders(system)
        client = redis.Redis.from_url(system.redis_url)
        fill(client, args.keys, args.aof_mb)
        aof_mb = client.info("persistence").get("aof_current_size", 0) / 2**20
        print(
            f"\n[{variant}] AOF {aof_mb:,.0f} MB, data {client.info('memory')['used_memory'] / 2**20:.0f} MB"
        )
        stalls = RedisStalls(system.redis_url)
        spawn = mp.get_context("spawn")
        out: Any = spawn.Queue()
        load = spawn.Process(
            target=loader, args=(system.url, system.token, 1000.0, 1, args.seconds, INTERVAL_S, out)
        )
        load.start()
        started, asked, finished_at = time.monotonic(), None, None
        while True:
            record = out.get(timeout=args.seconds + 120)
            if isinstance(record, dict):
                result.unanswered = record["sent"] - record["answered"]
                break
            sent, answered, latencies = record
            at = time.monotonic() - started
            rewriting = bool(client.info("persistence")["aof_rewrite_in_progress"])
            if asked is not None and finished_at is None and not rewriting:
                finished_at = at
            touched = asked is not None and (finished_at is None or at <= finished_at + 2 * INTERVAL_S + 0.5)
            worst, p99 = max(latencies, default=0.0), percentile(latencies, 99)
            if touched:
                result.worst_rewrite = max(result.worst_rewrite, worst)
                result.p99_rewrite = max(result.p99_rewrite, p99)
            else:
                result.worst_elsewhere = max(result.worst_elsewhere, worst)
            print(
                f"  {at:5.1f} s  sent {sent:5d} answered {answered:5d}  p50 {percentile(latencies, 50):6.1f}"
                f"  p99 {p99:6.1f}  worst {worst:6.1f} ms{'  rewrite' if touched else ''}",
                flush=True,
            )
            if asked is None and at >= args.rewrite_at:
                client.bgrewriteaof()
                asked = at
        load.join(10)
        result.stalls = stalls.report()
        latest = {row[0]: row[3] for row in client.execute_command("LATENCY", "LATEST")}
        result.slowest_fsync_ms = int(latest.get(b"aof-fsync-always", 0))
        print(f"  {result.stalls}")
    finally:
        system.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--keys", type=int, default=600_000)
    parser.add_argument("--aof-mb", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rewrite-at", type=float, default=10.0)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    rounds = [run_round(variant, args) for _ in range(args.rounds) for variant in variants]
    print_table(
        "The rewrite under 1,000 single orders/s (ms; Redis's slowest fsync from its latency monitor)",
        ["variant", "worst, rewrite", "p99, rewrite", "worst elsewhere", "slowest fsync", "unanswered"],
        [
            [
                r.variant,
                f"{r.worst_rewrite:.1f}",
                f"{r.p99_rewrite:.1f}",
                f"{r.worst_elsewhere:.1f}",
                r.slowest_fsync_ms,
                r.unanswered,
            ]
            for r in rounds
        ],
    )
    if any(r.unanswered for r in rounds):
        print("orders went unanswered", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
