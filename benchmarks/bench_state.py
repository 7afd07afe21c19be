"""Benchmark of the state bus: WATCH/MULTI/EXEC vs the Lua path, 1/4/8 writer processes.

Every writer increments one shared counter for a fixed time, through the real API:
``update_state_atomic`` (WATCH/MULTI/EXEC, retries on conflict) or ``increment_state``
(one Lua script, never retries). Prints updates/s, p50/p99 latency, retries and lost
updates (final counter vs. acknowledged updates), then a summary table (figure, baseline,
ratio). Runs twice: with the scheduler's own placement, and with Redis and every writer pinned
to one CPU. A bare PING from one writer is the floor. Uses REDIS_URL when set, else starts its
own private Redis. Always exits 0 on speed.

    .venv/bin/python benchmarks/bench_state.py [--seconds 3] [--layout unpinned|"one CPU"]
"""

from __future__ import annotations

import argparse
import array
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

WRITER_COUNTS = (1, 4, 8)
MODES = ("watch", "lua")
LABELS = {"ping": "PING (the floor)", "watch": "WATCH/MULTI/EXEC", "lua": "Lua script"}
#: The layouts compared: the scheduler's own placement, and Redis plus every writer on one CPU
#: (on small VMs a wake-up across CPUs costs far more than a switch on one; hean/affinity.py).
LAYOUTS = ("unpinned", "one CPU")
# Figures measured on the reference 2-core machine (../shared/DESIGN.md), for context.
DESIGN_REFERENCE = {("watch", 1): 4_200, ("watch", 8): 3_200, ("lua", 1): 10_000, ("lua", 8): 28_700}


def _worker(url: str, conn: Connection, cpus: frozenset[int] | None) -> None:
    from hean.core.system.redis_state import SyncRedisStateManager

    if cpus:
        os.sched_setaffinity(0, cpus)
    manager = SyncRedisStateManager(url)
    manager.get_state("warm-up", "bench")  # connected and imported before the first timed run
    conn.send("ready")
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
            elif mode == "ping":
                manager._redis.ping()
            else:
                manager.increment_state(key, {"n": 1}, "bench")
            latencies.append(time.perf_counter() - begin)
            done += 1
        conn.send((done, manager.stats.watch_conflicts - conflicts_before, latencies.tobytes()))
    manager.close()


@dataclass
class Result:
    layout: str
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


def run(url: str, seconds: float, cpus: frozenset[int] | None, layout: str) -> list[Result]:
    from hean.core.system.redis_state import SyncRedisStateManager

    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(max(WRITER_COUNTS)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(url, child, cpus), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("a writer process did not start within 60 s")
    print(f"\n[{layout}]", flush=True)
    checker = SyncRedisStateManager(url)
    results = []
    try:
        for writers in WRITER_COUNTS:
            for mode in ("ping", *MODES) if writers == 1 else MODES:
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
                    layout,
                    mode,
                    writers,
                    updates,
                    seconds,
                    _percentile(latencies, 0.50) * 1000,
                    _percentile(latencies, 0.99) * 1000,
                    sum(conflicts for _, conflicts, _ in replies),
                    0 if mode == "ping" else updates - stored.get("n", 0),
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
    print("\nPer configuration")
    print(
        f"{'layout':<9} {'writers':>7}  {'path':<17} {'updates/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'retries':>8} {'lost':>5}"
    )
    for r in results:
        print(
            f"{r.layout:<9} {r.writers:>7}  {LABELS[r.mode]:<17} {r.rate:>10,.0f} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {r.retries:>8,} {r.lost:>5}"
        )

    rows: list[tuple[str, float, str, float, str]] = []
    for layout in LAYOUTS:
        by = {(r.mode, r.writers): r for r in results if r.layout == layout}
        if not by:
            continue
        for writers in WRITER_COUNTS:
            lua, watch = by[("lua", writers)], by[("watch", writers)]
            rows.append(
                (
                    f"{layout}: Lua upd/s, {writers} writer(s)",
                    lua.rate,
                    f"WATCH {watch.rate:,.0f}/s",
                    lua.rate / max(watch.rate, 1e-9),
                    "target >= 5x at 8" if writers == 8 else "",
                )
            )
        floor = by[("ping", 1)]
        for mode in MODES:
            r = by[(mode, 1)]
            rows.append(
                (
                    f"{layout}: {LABELS[mode]} p99 ms, 1 writer",
                    r.p99_ms,
                    f"PING p99 {floor.p99_ms:.3f}",
                    r.p99_ms / 1.0,
                    "target < 1 ms (ratio to 1 ms)",
                )
            )
        for (mode, writers), reference in DESIGN_REFERENCE.items():
            r = by[(mode, writers)]
            rows.append(
                (
                    f"{layout}: {LABELS[mode]} upd/s, {writers} w",
                    r.rate,
                    f"DESIGN.md {reference:,}/s",
                    r.rate / reference,
                    "reference machine",
                )
            )
    lost = sum(r.lost for r in results)
    rows.append(("lost updates, all runs", float(lost), "0", float(lost), ""))

    print("\nSummary")
    print(f"{'figure':<42} {'value':>12}  {'baseline':<20} {'ratio':>7}  note")
    for figure, value, baseline, ratio, note in rows:
        print(f"{figure:<42} {value:>12,.3f}  {baseline:<20} {ratio:>7.2f}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="run time per configuration")
    parser.add_argument("--layout", choices=LAYOUTS, help="run only this layout")
    args = parser.parse_args()
    external = os.environ.get("REDIS_URL")
    one_cpu = frozenset({min(os.sched_getaffinity(0))})
    print(f"{os.cpu_count()} CPUs, {args.seconds:g} s per configuration")
    results: list[Result] = []
    for layout in LAYOUTS if args.layout is None else (args.layout,):
        cpus = one_cpu if layout == "one CPU" else None
        server: Any = None
        url = external
        if not url:
            from hean.redis_server import PrivateRedis

            server = PrivateRedis(Path(tempfile.mkdtemp(prefix="hean-bench-")), cpus=cpus)
            url = server.start()
            print(f"private Redis (valkey) on {server.redacted_url}, CPUs {sorted(cpus) if cpus else 'any'}")
        else:
            print("using REDIS_URL (not ours to pin: only the writers are pinned)")
        try:
            results += run(url, args.seconds, cpus, layout)
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
