"""A metric's write in prometheus_client's multiprocess mode (what every HEAN process runs under
`hean up`), with the process identifier HEAN gives it (`hean.metrics`: host and pid, set at
import and in each forked child) against one that asks the kernel for the pid at every write
(what it did before), in turns, in one run.

prometheus_client asks for the identifier at every value it writes, to notice a fork. Each
round writes what the engine worker writes per batch: a counter by label, a plain counter and a
histogram observation (its bucket and its sum), `--writes` times each.

Prints this process's CPU microseconds per write, min and median over the rounds, and the
ratio of the medians. Never fails on speed.

    .venv/bin/python benchmarks/bench_metrics.py [--rounds N] [--writes N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, values

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def each_write(identifier: Callable[[], str], directory: str) -> Callable[[int], float]:
    """A function that writes `n` times each of three metrics whose values take `identifier`,
    and returns its CPU seconds per write."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue(identifier)
    registry = CollectorRegistry()
    by_label = Counter("bench_by_label", "c", ["status"], registry=registry)
    plain = Counter("bench_plain", "c", registry=registry)
    latency = Histogram("bench_latency", "h", ["queue"], registry=registry)
    child = by_label.labels("FILLED")
    observed = latency.labels("engine")

    def run(n: int) -> float:
        start = time.process_time()
        for _ in range(n):
            child.inc(5)
            plain.inc()
            observed.observe(0.004)
        return (time.process_time() - start) / (n * 3)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--writes", type=int, default=20_000)
    args = parser.parse_args()

    from hean.metrics import _process_identifier  # set at import

    host = socket.gethostname().replace("_", "-")
    with tempfile.TemporaryDirectory() as old_dir, tempfile.TemporaryDirectory() as new_dir:
        ways = {
            "the pid asked at every write": each_write(lambda: f"{host}-{os.getpid()}", old_dir),
            "hean.metrics (set at import and fork)": each_write(_process_identifier, new_dir),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, run in ways.items():
                times[name].append(run(args.writes))
    print(f"CPU us per metric write, {args.rounds} rounds of {args.writes:,} x 3 writes, in turns:")
    medians = {}
    for name, got in times.items():
        medians[name] = statistics.median(got)
        print(f"  {name:40s} min {min(got) * 1e6:6.3f}  median {medians[name] * 1e6:6.3f}")
    old, new = medians.values()
    print(f"  ratio (hean.metrics / the pid asked): {new / old:.2f}x")


if __name__ == "__main__":
    main()
