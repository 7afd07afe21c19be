"""The background budget: CPU that everything `hean up` runs takes while idle (no orders),
per process, beside the floor of any 100 ms Celery heartbeat measured in the same window (a
bare celery beat sending a no-op task every 100 ms to a solo worker, benchmarks/bare_beat.py,
on a Redis of its own).

Budget (issue 14 item 5): HEAN idle at most 10% of one core, with the pulse and Flower kept.
HEAN is started as a user starts it, `hean up` on its embedded defaults (in a directory of its
own, on free ports), and everything under it is counted: the launcher itself, supervisord, the
private Redis, web, the three workers, beat, Flower and the history writer. CPU is read from
each process's own CPU seconds (psutil) over the same window, which shared, noisy machines
disturb far less than latencies. Prints a table; never fails on speed.

    .venv/bin/python benchmarks/bench_idle.py [--seconds S] [--settle S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psutil
from _harness import REPO_ROOT, print_table, stack

from hean.redis_server import die_with_parent, free_port

BUDGET_PCT = 10.0
#: What each process of `hean up` is called here, by what its command line contains (first match).
ROLES = (
    ("valkey-server", "redis"),
    ("redis-server", "redis"),
    ("supervisord", "supervisord"),
    ("-Q engine", "worker-engine"),
    ("-Q pulse", "worker-pulse"),
    ("-Q llm", "worker-llm"),
    ("workers beat", "beat"),
    ("flower", "flower"),
    ("hean.history", "history"),
    ("-m web", "web"),
)


def role(process: psutil.Process) -> str:
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    return next((name for part, name in ROLES if part in line), "other")


def healthy(url: str) -> bool:
    """Every module of a fresh pulse HEALTHY."""
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as answer:
        body = json.loads(answer.read())
        modules = body.get("modules") or {}
        return (
            not body.get("stale")
            and bool(modules)
            and all(m.get("status") == "HEALTHY" for m in modules.values())
        )
    return False


def cpu_seconds(processes: dict[int, psutil.Process]) -> dict[int, float]:
    seconds = {}
    for pid, process in processes.items():
        with contextlib.suppress(psutil.Error):
            seconds[pid] = float(sum(process.cpu_times()[:2]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to let start-up work end")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hean-idle-"))
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "HEAN_API_TOKEN")}
    port = free_port()
    env.update(HEAN_HOME=str(home), HEAN_PORT=str(port), HEAN_FLOWER_PORT=str(free_port()))
    print(f"hean up in {home} (web on port {port}) ...", flush=True)
    up = subprocess.Popen(
        [str(Path(sys.executable).parent / "hean"), "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=open(home / "up.log", "wb"),  # noqa: SIM115 - owned by the child
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + 120
        while not healthy(f"http://127.0.0.1:{port}/api/system/health/pulse"):
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"hean up did not come up healthy; see {home / 'up.log'}")
            time.sleep(0.5)
        print("every module HEALTHY; starting the floor on a Redis of its own ...", flush=True)
        with stack([]) as floor:
            floor.spawn_bare_heartbeat()
            print(f"settling {args.settle:.0f} s, then measuring {args.seconds:.0f} s ...", flush=True)
            time.sleep(args.settle)
            root = psutil.Process(up.pid)
            hean = {p.pid: p for p in [root, *root.children(recursive=True)]}
            floor_pids = floor.pids()
            others = {pid: psutil.Process(pid) for pid in floor_pids.values()}
            before, floor_before, t0 = cpu_seconds(hean), cpu_seconds(others), time.perf_counter()
            time.sleep(args.seconds)
            after, floor_after, wall = cpu_seconds(hean), cpu_seconds(others), time.perf_counter() - t0
        shares: dict[str, float] = defaultdict(float)
        for pid, process in hean.items():
            if pid in before and pid in after:
                name = "hean up (launcher)" if pid == up.pid else role(process)
                shares[name] += 100 * (after[pid] - before[pid]) / wall
        floor_shares = {
            name: 100 * (floor_after[pid] - floor_before[pid]) / wall
            for name, pid in floor_pids.items()
            if pid in floor_before and pid in floor_after
        }
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
    total = sum(shares.values())
    heartbeat = sum(floor_shares.get(name, 0.0) for name in ("bare worker", "bare beat"))
    with_redis = heartbeat + floor_shares.get("redis", 0.0)
    rows = [[name, f"{pct:.2f}"] for name, pct in sorted(shares.items(), key=lambda item: -item[1])]
    rows.append(["HEAN, everything hean up runs", f"{total:.2f}"])
    bare_beat, bare_worker = floor_shares.get("bare beat", 0.0), floor_shares.get("bare worker", 0.0)
    rows.append(["floor: bare celery beat", f"{bare_beat:.2f}"])
    rows.append(["floor: bare solo worker (no-op task every 100 ms)", f"{bare_worker:.2f}"])
    rows.append(["floor: both", f"{heartbeat:.2f}"])
    rows.append(["floor: both, with their own Redis", f"{with_redis:.2f}"])
    print_table(f"idle CPU over {args.seconds:.0f} s (% of one core)", ["process", "CPU %"], rows)
    print(
        f"\nHEAN idle {total:.1f}% of one core (budget {BUDGET_PCT:.0f}%: "
        f"{'within' if total <= BUDGET_PCT else 'OVER'}), "
        f"{total / with_redis:.2f}x the bare 100 ms heartbeat's {with_redis:.1f}% (its Redis included)"
    )
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
