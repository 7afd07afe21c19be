"""Benchmark of the state bus: WATCH/MULTI/EXEC vs the Lua path, 1/4/8 writer processes.

Every writer increments one shared counter for a fixed time, through the real API:
``update_state_atomic`` (WATCH/MULTI/EXEC, retries on conflict) or ``increment_state``
(one Lua script, never retries). Prints updates/s, p50/p99 latency, retries and lost
updates (final counter vs. acknowledged updates), then a summary table (figure, baseline,
ratio). Uses REDIS_URL when set, else starts its own private Redis. Always exits 0 on speed.

    .venv/bin/python benchmarks/bench_state.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import array
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

WRITER_COUNTS = (1, 4, 8)
MODES = ("watch", "lua")
LABELS = {"watch": "WATCH/MULTI/EXEC", "lua": "Lua script"}
# Figures measured on the reference 2-core machine (../shared/DESIGN.md), for context.
DESIGN_REFERENCE = {("watch", 1): 4_200, ("watch", 8): 3_200, ("lua", 1): 10_000, ("lua", 8): 28_700}


def _worker(url: str, conn: Connection) -> None:
    from hean.core.system.redis_state import SyncRedisStateManager

    manager = SyncRedisStateManager(url)
    while True:
        command = conn.recv()
        if command is None:
            break
        mode, key, start_at, seconds = command
        latencies = array.array("d")
        conflicts_before = manager.stats.watch_conflicts
        done = 0
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while time.time() < end:
            begin = time.perf_counter()
            if mode == "watch":
                manager.update_state_atomic(key, lambda cur: {"n": (cur or {}).get("n", 0) + 1}, "bench")
            else:
                manager.increment_state(key, {"n": 1}, "bench")
            latencies.append(time.perf_counter() - begin)
            done += 1
        conn.send((done, manager.stats.watch_conflicts - conflicts_before, latencies.tobytes()))
    manager.close()


@dataclass
class Result:
    mode: str
    writers: int
    updates: int
    seconds: float
    p50_ms: float
    p99_ms: float
    retries: int
    lost: int

    @property
    def rate(self) -> float:
        return self.updates / self.seconds


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(url: str, seconds: float) -> list[Result]:
    from hean.core.system.redis_state import SyncRedisStateManager

    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(max(WRITER_COUNTS)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(url, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    checker = SyncRedisStateManager(url)
    results = []
    try:
        for writers in WRITER_COUNTS:
            for mode in MODES:
                key = f"counter-{mode}-{writers}-{os.getpid()}-{time.time_ns()}"
                start_at = time.time() + 0.5
                for pipe in pipes[:writers]:
                    pipe.send((mode, key, start_at, seconds))
                replies = [pipe.recv() for pipe in pipes[:writers]]
                updates = sum(done for done, _, _ in replies)
                latencies: list[float] = []
                for _, _, raw in replies:
                    latencies.extend(array.array("d", raw))
                stored = checker.get_state(key, "bench") or {}
                checker.delete_state(key, "bench")
                result = Result(
                    mode,
                    writers,
                    updates,
                    seconds,
                    _percentile(latencies, 0.50) * 1000,
                    _percentile(latencies, 0.99) * 1000,
                    sum(conflicts for _, conflicts, _ in replies),
                    updates - stored.get("n", 0),
                )
                results.append(result)
                print(
                    f"  {writers} writer(s) {LABELS[mode]:<17} {result.rate:>10,.0f} upd/s "
                    f"p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:7.3f} ms  "
                    f"retries {result.retries:>7,}  lost {result.lost}",
                    flush=True,
                )
    finally:
        for pipe in pipes:
            pipe.send(None)
        for proc in procs:
            proc.join(timeout=10)
        checker.close()
    return results


def report(results: list[Result]) -> None:
    by = {(r.mode, r.writers): r for r in results}
    print("\nPer configuration")
    print(
        f"{'writers':>7}  {'path':<17} {'updates/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'retries':>8} {'lost':>5}"
    )
    for r in results:
        print(
            f"{r.writers:>7}  {LABELS[r.mode]:<17} {r.rate:>10,.0f} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {r.retries:>8,} {r.lost:>5}"
        )

    rows: list[tuple[str, float, str, float, str]] = []
    for writers in WRITER_COUNTS:
        lua, watch = by[("lua", writers)], by[("watch", writers)]
        rows.append(
            (
                f"Lua updates/s, {writers} writer(s)",
                lua.rate,
                f"WATCH {watch.rate:,.0f}/s",
                lua.rate / watch.rate,
                "target >= 5x at 8" if writers == 8 else "",
            )
        )
    for mode in MODES:
        r = by[(mode, 1)]
        rows.append(
            (
                f"{LABELS[mode]} p99 ms, 1 writer",
                r.p99_ms,
                "target 1 ms",
                r.p99_ms / 1.0,
                "ratio < 1 meets the target",
            )
        )
    for (mode, writers), reference in DESIGN_REFERENCE.items():
        r = by[(mode, writers)]
        rows.append(
            (
                f"{LABELS[mode]} updates/s, {writers} writer(s)",
                r.rate,
                f"DESIGN.md {reference:,}/s",
                r.rate / reference,
                "reference machine",
            )
        )
    lost = sum(r.lost for r in results)
    rows.append(("lost updates, all runs", float(lost), "0", float(lost), ""))

    print("\nSummary")
    print(f"{'figure':<36} {'value':>12}  {'baseline':<20} {'ratio':>7}  note")
    for figure, value, baseline, ratio, note in rows:
        print(f"{figure:<36} {value:>12,.3f}  {baseline:<20} {ratio:>7.2f}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="run time per configuration")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    server: Any = None
    if not url:
        from hean.redis_server import PrivateRedis

        server = PrivateRedis(Path(tempfile.mkdtemp(prefix="hean-bench-")))
        url = server.start()
        print(f"private Redis (valkey) on {url}")
    else:
        print("using REDIS_URL")
    print(f"{os.cpu_count()} CPUs, {args.seconds:g} s per configuration\n")
    try:
        report(run(url, args.seconds))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
