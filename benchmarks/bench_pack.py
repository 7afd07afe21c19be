"""The engine worker's commit, client side: redis-py's `Pipeline.execute()` against
`hean.redis_client.execute_transaction` on the process's own connection (what
workers/execution.py runs), and the packing alone:
redis-py's `Connection.pack_commands` against `hean.redis_client.pack_commands`, in turns, in one
run, on a private Redis (`appendfsync always`, as `hean up` runs it).

Two commits, shaped as the engine worker's (the log entry, the in-flight list's DEL, the
delivery's acknowledgement, the take-ahead script, the results into the journal by its script,
one pub/sub message with the result packets):
- `5 single orders`: a batch of five `submit_order` commands, as at 1,000 single orders/s;
- `5 x 100 orders`: five 100-order `submit_orders` commands, as at 60,000 orders/s.

Prints the client's CPU microseconds per commit (this process only: Redis and the wait for its
fsync are not counted), min and median over the rounds, and the ratio of the medians. Never
fails on speed.

    .venv/bin/python benchmarks/bench_pack.py [--rounds N] [--commits N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hean import fastjson
from hean.command_journal import CommandJournal
from hean.redis_client import OwnConnection, execute_transaction, pack_commands
from hean.redis_server import PrivateRedis
from workers.emit import packet_message

TAKE = "return {redis.call('LRANGE', KEYS[2], 0, -1), {}, {}, {}}"


def results(commands: int, orders: int) -> list[dict[str, Any]]:
    """`commands` command_result messages of `orders` filled orders each."""
    out = []
    for _ in range(commands):
        order = {"client_order_id": uuid.uuid4().hex, "status": "FILLED", "fill_price": "64000.50000000"}
        result: Any = {"order": order} if orders == 1 else {"results": [order] * orders, "accepted": orders}
        out.append(
            {
                "request_id": uuid.uuid4().hex,
                "command": "submit_order" if orders == 1 else "submit_orders",
                "success": True,
                "result": result,
                "error": None,
                "execution_time_ms": 0.012,
            }
        )
    return out


def fill(pipe: Any, fresh: list[dict[str, Any]], orders: int) -> None:
    """The engine worker's commit for the results `fresh`, queued on `pipe`."""
    pipe.xadd(
        "bench:log",
        {"cmd": "orders", "columns": b"\x01" * (40 * orders * len(fresh)), "now_ns": time.time_ns()},
    )
    pipe.delete("bench:inflight")
    pipe.zrem("bench:unacked_index", "tag")
    pipe.hdel("bench:unacked", "tag")
    pipe.execute_command("EVAL", TAKE, 2, "bench:queue", "bench:inflight", 200, "marker", time.time())
    CommandJournal.record_results(pipe, fresh)
    packets = [
        packet_message("command_result", message, [uuid.uuid4().hex, "operators"]) for message in fresh
    ]
    pipe.publish("bench:socketio", fastjson.dumpb({"method": "bulk", "messages": packets}))


def measure(
    client: redis.Redis, conn: Any, shape: str, fresh: list[dict[str, Any]], rounds: int, commits: int
) -> None:
    """Print the four ways for one commit shape, in turns."""
    orders = len(fresh[0]["result"].get("results", [None]))
    own = OwnConnection(client.connection_pool)  # as the engine worker commits (hot_connection)

    def queued() -> Any:
        pipe = client.pipeline(transaction=True)
        fill(pipe, fresh, orders)
        return pipe

    commands = [args for args, _ in queued().command_stack]
    ways: dict[str, tuple[str, Callable[[], Any]]] = {
        "redis-py Pipeline.execute": ("commit", lambda: queued().execute()),
        "hean execute_transaction": ("commit", lambda: execute_transaction(own, queued())),
        "redis-py pack_commands": ("packing alone", lambda: conn.pack_commands(commands)),
        "hean pack_commands": ("packing alone", lambda: pack_commands(conn, commands)),
    }
    took: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, (_, way) in ways.items():
            started = time.process_time()
            for _ in range(commits):
                way()
            took[name].append((time.process_time() - started) / commits * 1e6)
    for name, (what, _) in ways.items():
        low, mid = min(took[name]), statistics.median(took[name])
        print(f"{shape + ', ' + what:34} {name:32} {low:8.1f} {mid:8.1f}")
    for before, after in (
        ("redis-py Pipeline.execute", "hean execute_transaction"),
        ("redis-py pack_commands", "hean pack_commands"),
    ):
        ratio = statistics.median(took[after]) / statistics.median(took[before])
        print(f"{'':34} {after + ' / redis-py':32} {ratio:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds per way (they alternate)")
    parser.add_argument("--commits", type=int, default=200, help="commits per round")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="hean-bench-")  # removed at exit
    server = PrivateRedis(Path(scratch.name))
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        conn = client.connection_pool.get_connection()
        print(
            f"{args.rounds} rounds of {args.commits} commits per way, in turns (CPU us per commit)",
            flush=True,
        )
        print(f"\n{'what':34} {'way':32} {'min':>8} {'median':>8}")
        measure(client, conn, "5 single orders", results(5, 1), args.rounds, args.commits)
        measure(client, conn, "5 x 100 orders", results(5, 100), args.rounds, args.commits)
        client.connection_pool.release(conn)
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
