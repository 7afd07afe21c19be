"""The background budget: CPU that everything `hean up` runs takes while idle (no orders),
per process, beside the floor of any 100 ms Celery heartbeat measured in the same run (a bare
celery beat sending a no-op task every 100 ms to a solo worker, benchmarks/bare_beat.py).

Budget (issue 14 item 5): HEAN idle at most 10% of one core, with the pulse and Flower kept.
CPU is read from each process's own CPU seconds (psutil) over the same window, which shared,
noisy machines disturb far less than latencies. Prints a table; never fails on speed.

    .venv/bin/python benchmarks/bench_idle.py [--seconds S]
"""

from __future__ import annotations

import argparse
import time

from _harness import CpuMeter, print_table, stack

BUDGET_PCT = 10.0
HEAN = ["web", "worker-engine", "worker-pulse", "worker-llm", "beat", "flower"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to let start-up work end")
    args = parser.parse_args()
    with stack(HEAN) as system:
        system.spawn_bare_heartbeat()
        time.sleep(args.settle)
        pids = system.pids()
        meter = CpuMeter(pids)
        time.sleep(args.seconds)
        shares = meter.shares()
    hean = {name: shares[name] for name in [*HEAN, "redis"] if name in shares}
    floor = shares["bare worker"] + shares["bare beat"]
    rows = [[name, f"{pct:.1f}"] for name, pct in hean.items()]
    total = sum(hean.values())
    rows.append(["HEAN, all processes", f"{total:.1f}"])
    rows.append(["floor: bare celery beat", f"{shares['bare beat']:.1f}"])
    rows.append(["floor: bare solo worker (no-op task every 100 ms)", f"{shares['bare worker']:.1f}"])
    rows.append(["floor: both", f"{floor:.1f}"])
    print_table(
        f"idle CPU over {args.seconds:.0f} s (% of one core)",
        ["process", "CPU %"],
        rows,
    )
    print(
        f"\nHEAN idle {total:.1f}% of one core (budget {BUDGET_PCT:.0f}%), "
        f"{total / floor:.1f}x the bare 100 ms heartbeat's {floor:.1f}%"
    )


if __name__ == "__main__":
    main()
