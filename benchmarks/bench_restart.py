"""How soon a restarted engine worker answers, beside a bare Celery worker restarted the same way.

The engine worker is killed (SIGKILL, as the OOM killer or an operator would) and started again
as `hean up` starts it; a `start` command sent right after the start is answered once the new
worker has imported its modules, restored the engine and taken its queue. The floor, in turns
with it: the bare Celery app of `bare_beat.py`, its solo worker killed and started again the same
way, with one no-op task waiting on its queue, timed to the task's start. Nothing else is queued
(bench_recovery.py measures a kill under a backlog). Prints each restart, the medians and their
ratio. Never fails on speed.

Usage: python benchmarks/bench_restart.py [--rounds N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time

import redis
from _harness import print_table, stack
from celery import Celery

from hean.client import Client
from hean.processes import PROCESSES

TIMES_KEY = "bench:restart:noop"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="restarts of each, in turns")
    args = parser.parse_args()
    engine_argv = next(spec for spec in PROCESSES if spec.name == "worker-engine").argv(sys.executable)
    hean_s: list[float] = []
    bare_s: list[float] = []
    with stack(["worker-engine", "web"]) as system:
        store = redis.Redis.from_url(system.redis_url)
        producer = Celery(broker=system.redis_url)
        system.spawn_bare("worker", TIMES_KEY)
        with Client(system.url, token=system.token) as hean:
            hean.command("start").wait(60)  # both running before the first kill
            producer.send_task("bare_beat.noop", queue="bare")
            if store.blpop([TIMES_KEY], timeout=60) is None:
                raise RuntimeError("the bare worker ran no task within 60 s")
            for round_ in range(1, args.rounds + 1):
                engine = system.processes["worker-engine"]
                engine.send_signal(signal.SIGKILL)
                engine.wait()
                started = time.monotonic()
                system.spawn("worker-engine", engine_argv)
                hean.command("start").wait(60)
                hean_s.append(time.monotonic() - started)

                bare = system.processes["bare worker"]
                bare.send_signal(signal.SIGKILL)
                bare.wait()
                producer.send_task("bare_beat.noop", queue="bare")
                started = time.monotonic()
                system.spawn_bare("worker", TIMES_KEY)
                if store.blpop([TIMES_KEY], timeout=60) is None:
                    raise RuntimeError("the restarted bare worker ran no task within 60 s")
                bare_s.append(time.monotonic() - started)
                print(
                    f"round {round_}: engine worker {hean_s[-1]:.2f} s, bare worker {bare_s[-1]:.2f} s",
                    flush=True,
                )
        producer.close()
        store.close()
    hean_median, bare_median = statistics.median(hean_s), statistics.median(bare_s)
    print_table(
        f"From a restart's spawn to its first task (s; {args.rounds} restarts each, in turns)",
        ["worker", "median", "min", "max", "vs the bare worker"],
        [
            [
                "bare Celery worker (the floor)",
                f"{bare_median:.2f}",
                f"{min(bare_s):.2f}",
                f"{max(bare_s):.2f}",
                "1.00x",
            ],
            [
                "HEAN engine worker",
                f"{hean_median:.2f}",
                f"{min(hean_s):.2f}",
                f"{max(hean_s):.2f}",
                f"{hean_median / bare_median:.2f}x",
            ],
        ],
    )


if __name__ == "__main__":
    main()
