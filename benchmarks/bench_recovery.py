"""How long orders wait after the engine worker is SIGKILLed holding a full take, beside the same
backlog without the kill.

A loader sends orders at --rate (single orders, or --per-event orders per command) for
--seconds. After --kill-after s the engine worker is stopped (SIGSTOP) for --stall s so that a
backlog builds, let go (SIGCONT), and --hold s later, while it runs the first take of that backlog
(up to 200 batch messages in its in-flight list), either killed (SIGKILL) and started again, as
the OOM killer or an operator would, or left to run (the baseline, in a system of its own, the
same way). A worker that dies holding a batch has its successor run what it held in groups of
at most `workers.engine.RECOVERY_GROUP` commands, each group named in Redis before it runs
(README, "What an ack promises, and after which faults": a command that kills its worker
whenever it runs); the other orders wait behind that.

Printed per case: the commands in flight at the kill, when the successor began and ended running
them in recovery (`hean:engine:alone` seen), and the time from the kill (or the let-go) until the
queue was caught up again (the engine queue and the in-flight list empty), with every order
answered.

Usage: python benchmarks/bench_recovery.py [--rate R] [--per-event N] [--seconds S]
       [--kill-after S] [--stall S] [--hold S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import sys
import time
from typing import Any

import redis
from _harness import print_table, stack
from bench_ack import load

from hean.processes import PROCESSES
from hean.topology import ENGINE_ALONE_KEY, ENGINE_INFLIGHT_KEY, ENGINE_QUEUE


def caught_up(
    client: redis.Redis, since: float, timeout: float = 120.0
) -> tuple[float | None, float | None, float]:
    """Poll until the engine queue and the in-flight list are empty; return when the successor's
    recovery run was first and last seen (s after `since`, or None) and when it caught up."""
    first = last = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        alone = client.exists(ENGINE_ALONE_KEY)
        now = time.time() - since
        if alone:
            first = now if first is None else first
            last = now
        elif client.llen(ENGINE_QUEUE) <= 1 and client.llen(ENGINE_INFLIGHT_KEY) == 0:
            return first, last, now
        time.sleep(0.005)
    raise RuntimeError(f"the engine did not catch up within {timeout:.0f} s")


def run_case(args: argparse.Namespace, kill: bool) -> dict[str, Any]:
    specs = {spec.name: spec for spec in PROCESSES}
    env = {"HEAN_COMMAND_RATE": "1000000", "HEAN_COMMAND_BURST": "1000000"}
    with stack(["worker-engine", "web", "history"], **env) as system:
        client = redis.Redis.from_url(system.redis_url)
        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        loader = ctx.Process(
            target=load, args=(system.url, system.token, args.rate, args.seconds, args.per_event, out)
        )
        loader.start()
        time.sleep(args.kill_after)
        engine = system.processes["worker-engine"]
        engine.send_signal(signal.SIGSTOP)
        time.sleep(args.stall)
        queued = int(client.llen(ENGINE_QUEUE))
        engine.send_signal(signal.SIGCONT)
        time.sleep(args.hold)
        in_flight = int(client.llen(ENGINE_INFLIGHT_KEY))
        if kill:
            engine.send_signal(signal.SIGKILL)
            engine.wait()
        since = time.time()
        if kill:
            system.spawn("worker-engine", specs["worker-engine"].argv(sys.executable))
        first, last, done = caught_up(client, since)
        stats = out.get(timeout=300)
        loader.join()
        client.close()
        log = (system.home / "worker-engine.log").read_text(errors="replace")
        alone = [line for line in log.splitlines() if "event=batch_run_alone" in line]
    return {
        "queued": queued,
        "in_flight": in_flight,
        "first": first,
        "last": last,
        "done": done,
        "stats": stats,
        "alone": alone,
    }


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=4000, help="orders per second")
    parser.add_argument("--per-event", type=int, default=1, help="orders per command (1: submit_order)")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the loader sends")
    parser.add_argument("--kill-after", type=float, default=4.0, help="s into the load the worker is stopped")
    parser.add_argument("--stall", type=float, default=3.0, help="s the worker stays stopped")
    parser.add_argument("--hold", type=float, default=0.15, help="s after the let-go it is killed")
    args = parser.parse_args()
    cases = {}
    for name, kill in (("not killed (the baseline)", False), ("killed holding its take", True)):
        print(f"... {name}: {args.rate} orders/s, {args.per_event} per command", flush=True)
        cases[name] = result = run_case(args, kill)
        counts = result["stats"]["counts"]
        print(
            f"    answered {counts.get('results', 0)} of {result['stats']['events']} commands; "
            + "; ".join(result["alone"])[:300]
        )
    rows = []
    for name, r in cases.items():
        alone_s = None if r["first"] is None else r["last"] - r["first"]
        rows.append(
            [
                name,
                r["queued"],
                r["in_flight"],
                seconds(r["first"]),
                seconds(alone_s),
                f"{r['done']:.2f}",
                r["stats"]["counts"].get("results", 0) == r["stats"]["events"],
            ]
        )
    print_table(
        f"The engine worker stopped {args.stall:.0f} s under {args.rate} orders/s "
        f"({args.per_event} per command), then let go, and {args.hold * 1000:.0f} ms later killed or not",
        [
            "case",
            "messages queued",
            "messages in flight",
            "recovery from (s)",
            "recovery for (s)",
            "caught up after (s)",
            "all answered",
        ],
        rows,
    )
    base, killed = cases.values()
    print(
        f"\nthe kill cost {killed['done'] - base['done']:.2f} s more before the queue caught up "
        f"({killed['done'] / base['done']:.1f}x the baseline's {base['done']:.2f} s)"
    )


if __name__ == "__main__":
    main()
