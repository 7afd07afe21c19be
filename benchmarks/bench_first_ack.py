"""The first acks of a freshly started web process, beside its later ones (ms).

Starts the web process and the engine worker on a private Redis (as `hean up` does) --starts
times; each time, once the health GET answers, one client sends --commands `risk_adjust`
commands, one every 50 ms, each when the last one's ack is in, and times each round trip
(send -> Socket.IO ack). The baseline is the same process's later acks: what the first command
pays on top of them is what the web process did on its behalf at its first use (before
`CommandIntake.warm_up`: opening the database reader, asking Redis how it keeps writes, loading
the journal's scripts, building the broker's message frames). Prints a table; never fails on
speed.

    .venv/bin/python benchmarks/bench_first_ack.py [--starts 3] [--commands 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RawSocketIO, print_table, stack, wait_http

#: Pause between two commands: each finds the system idle, as a first command does.
GAP_S = 0.05


def first_acks(commands: int) -> list[float]:
    """Round trips in ms of the first `commands` commands of a freshly started web process."""
    with stack(["worker-engine", "web"]) as system:
        wait_http(system.url + "/api/system/health")
        client = RawSocketIO(system.url, {"token": system.token})
        try:
            times = []
            for _ in range(commands):
                body = {"command": "risk_adjust", "params": {"fee_rate": "0"}, "request_id": uuid.uuid4().hex}
                started = time.perf_counter()
                reply = client.call("command", body)
                times.append((time.perf_counter() - started) * 1000.0)
                if not (isinstance(reply, dict) and reply.get("accepted")):
                    raise RuntimeError(f"command refused: {reply}")
                time.sleep(GAP_S)
            return times
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--commands", type=int, default=8)
    args = parser.parse_args()
    if args.commands < 2:
        parser.error("--commands: at least 2 (the first, and the later ones it is compared with)")
    rows = []
    for start in range(1, args.starts + 1):
        times = first_acks(args.commands)
        later = statistics.median(times[1:])
        rows.append(
            [
                str(start),
                f"{times[0]:.2f}",
                f"{later:.2f}",
                f"{times[0] / later:.1f}x",
                " ".join(f"{t:.1f}" for t in times),
            ]
        )
        print(f"  start {start}: first ack {times[0]:.2f} ms, later ones (median) {later:.2f} ms", flush=True)
    print_table(
        "the first command's ack after the web process started, beside its later ones (ms)",
        ["start", "first", "later (median)", "first / later", "every ack, in order"],
        rows,
    )


if __name__ == "__main__":
    main()
