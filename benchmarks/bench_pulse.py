"""The Pulse: period jitter of the 100 ms health pulse idle and while 1,000 orders/s flow, and
how long a killed module takes to be flagged. Targets (issue 7): jitter p99 <= 10 ms under
load; a dead module flagged within 300 ms.

Usage: python benchmarks/bench_pulse.py [--seconds S]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import percentile, print_table, stack
from bench_ack import load

from celeryconfig import PULSE_PERIOD_S
from hean.core.system.health_monitor import HEALTH_NAMESPACE, SUMMARY_KEY
from hean.core.system.redis_state import SyncRedisStateManager


def pulse_times(manager: SyncRedisStateManager, seconds: float) -> list[float]:
    """Times (pulse's own `at`) of the pulses published during `seconds`."""
    queue = manager.subscribe_state(SUMMARY_KEY, namespace=HEALTH_NAMESPACE)
    times: list[float] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            value, _, _ = queue.get(timeout=1.0)
        except Exception:
            continue
        if value and (not times or value["at"] > times[-1]):
            times.append(value["at"])
    manager.unsubscribe_state(queue)
    return times[1:]  # the first item is the stored value, not a fresh pulse


def jitter_row(name: str, times: list[float]) -> list[object]:
    gaps = [(b - a) * 1000.0 for a, b in itertools.pairwise(times)]
    jitter = [abs(g - PULSE_PERIOD_S * 1000.0) for g in gaps]
    return [
        name,
        len(gaps),
        f"{percentile(gaps, 50):.1f}",
        f"{percentile(jitter, 50):.1f}",
        f"{percentile(jitter, 99):.1f}",
        f"{max(jitter) if jitter else float('nan'):.1f}",
        "10.0 (p99)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    names = ["worker-engine", "worker-llm", "worker-pulse", "beat", "web"]
    with stack(names, HEAN_COMMAND_RATE="100000") as system:
        manager = SyncRedisStateManager(system.redis_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and manager.get_state(SUMMARY_KEY, HEALTH_NAMESPACE) is None:
            time.sleep(0.2)
        idle = pulse_times(manager, args.seconds)

        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        loader = ctx.Process(target=load, args=(system.url, system.token, 1000, args.seconds + 2, 100, out))
        loader.start()
        time.sleep(1.0)
        loaded = pulse_times(manager, args.seconds)
        stats = out.get(timeout=180)
        loader.join()

        # kill the engine worker and time how long until the pulse says so
        killed_at = time.time()
        system.processes["worker-engine"].send_signal(signal.SIGKILL)
        flagged_after = None
        queue = manager.subscribe_state(SUMMARY_KEY, namespace=HEALTH_NAMESPACE)
        until = time.monotonic() + 10
        while time.monotonic() < until and flagged_after is None:
            try:
                value, _, _ = queue.get(timeout=1.0)
            except Exception:
                continue
            module = (value or {}).get("modules", {}).get("cpp_core", {})
            if (
                module.get("status") in {"DISCONNECTED", "UNHEALTHY"}
                and module.get("last_check", 0) > killed_at
            ):
                flagged_after = (module["last_check"] - killed_at) * 1000.0
        manager.close()

    print_table(
        f"Pulse period (target {PULSE_PERIOD_S * 1000:.0f} ms) and jitter |gap - period| in ms",
        ["scenario", "gaps", "gap p50", "jitter p50", "jitter p99", "jitter max", "target"],
        [
            jitter_row("idle", idle),
            jitter_row(f"while {stats['sent'] / stats['send_s']:.0f} orders/s flow", loaded),
        ],
    )
    flagged = "not flagged within 10 s" if flagged_after is None else f"{flagged_after:.0f} ms"
    print(f"\nengine worker killed -> cpp_core flagged: {flagged} (target <= 300 ms)")
    print(f"load: {stats['counts']}")


if __name__ == "__main__":
    main()
