"""What a full garbage collection costs in each of HEAN's processes, before and after it
freezes what it loaded to start (hean/gc_policy.py).

Each process logs the CPU time of one full collection just before ``gc.freeze()`` and one
just after, once it is ready to serve (``event=gc_frozen``); this script starts the system
and prints them side by side. CPU time, not wall time: on a busy machine a collection is also
descheduled, which the tail of every order in flight then pays too
(``benchmarks/bench_orders.py`` shows that part). Prints a table; never fails on speed.

    .venv/bin/python benchmarks/bench_gc.py
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from _harness import print_table, stack

from hean.processes import PROCESSES as SPECS

PROCESSES = ["web", "worker-engine", "worker-pulse", "worker-llm", "beat", "history"]
FROZEN = re.compile(
    rb"event=gc_frozen process=\S+ objects=(\d+) "
    rb"full_collection_ms_before=([\d.]+) full_collection_ms_after=([\d.]+)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for every process")
    args = parser.parse_args()
    found: dict[str, tuple[int, float, float]] = {}
    specs = {spec.name: spec for spec in SPECS}
    with stack([], HEAN_LOG_LEVEL="info") as system:
        for name in PROCESSES:  # Celery's workers and beat log at -l; the line is at info
            argv = specs[name].argv(sys.executable)
            system.spawn(name, [("info" if a == "warning" else a) for a in argv])
        deadline = time.monotonic() + args.timeout
        while len(found) < len(PROCESSES) and time.monotonic() < deadline:
            for name in PROCESSES:
                match = FROZEN.search((system.home / f"{name}.log").read_bytes())
                if match and name not in found:
                    found[name] = (int(match[1]), float(match[2]), float(match[3]))
            time.sleep(0.5)
    rows: list[list[object]] = []
    for name in PROCESSES:
        if name not in found:
            rows.append([name, "no gc_frozen line", "", "", ""])
            continue
        objects, before, after = found[name]
        rows.append([name, objects, f"{before:.2f}", f"{after:.3f}", f"{before / max(after, 1e-3):.0f}x"])
    print_table(
        "A full collection in each process: CPU ms before and after gc.freeze() (same process)",
        ["process", "objects frozen", "before, ms", "after, ms", "before / after"],
        rows,
    )


if __name__ == "__main__":
    main()
