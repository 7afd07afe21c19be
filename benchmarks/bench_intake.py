"""The web process's CPU per command on the intake path, step by step, against what each step
replaced, in one run (in process, min of --repeat runs of --number calls each: the machine is
shared, and the minimum is the figure least disturbed by the others).

Steps, for a 100-order `submit_orders` command and a single `submit_order`:
- params: validate and encode the params (`hean.commands.fast_params.params_json`) against the
  models (`model_validate` + `model_dump_json`), which it replaced for orders;
- intake check: `CommandIntake._check` (request, params, envelope) with the fast path and with
  the models;
- reserve script: the web's side of the journal's reservation script on a private Redis (CPU of
  this process per call, Redis's own not counted) against the same call also sending each
  envelope escaped, as the web did before the script escaped them itself;
- pub/sub push: what redis-py 8.1's own pub/sub handler spent per result message (building a
  debug line from the message, redis/redis-py#4230) against the listener's own handler.

Never fails on speed. Usage: python benchmarks/bench_intake.py [--repeat R] [--number N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import print_table

from hean import fastjson
from hean.celery_wire import MessageFrame, batch_frame, escape_envelope
from hean.command_journal import CommandJournal
from hean.commands import get_command
from hean.commands.fast_params import params_json
from hean.redis_server import PrivateRedis
from hean.topology import BATCH_TASKS, ENGINE_QUEUE


def order(i: int) -> dict[str, Any]:
    return {"client_order_id": f"bench-{i}", "symbol": "BTCUSDT", "side": "BUY" if i % 2 else "SELL",
            "quantity": "0.001"}  # fmt: skip


def commands() -> dict[str, dict[str, Any]]:
    return {
        "100 orders": {"command": "submit_orders", "params": {"orders": [order(i) for i in range(100)]},
                       "request_id": "bench-b1"},
        "1 order": {"command": "submit_order", "params": order(1), "request_id": "bench-1"},
    }  # fmt: skip


def models_json(model: Any, params: Any) -> str:
    """What the intake did before the fast path: the models, both ways."""
    return str(model.model_validate(params).model_dump_json(exclude_unset=True))


def best_us(call: Callable[[], Any], repeat: int, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def cpu_us(call: Callable[[], Any], repeat: int, number: int) -> float:
    """Min over `repeat` runs of this process's CPU time per call (I/O waits not counted)."""
    runs = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(number):
            call()
        runs.append((time.process_time() - started) / number * 1e6)
    return min(runs)


def row(step: str, size: str, before: float, after: float, per: int) -> list[object]:
    return [step, size, f"{before:.1f}", f"{after:.1f}", f"{before / per:.2f} -> {after / per:.2f}",
            f"{before / after:.2f}x" if after >= 0.1 else "gone"]  # fmt: skip


def orders_in(data: dict[str, Any]) -> list[dict[str, Any]]:
    params = data["params"]
    return list(params["orders"]) if "orders" in params else [params]


def validation_rows(data: dict[str, Any], size: str, repeat: int, number: int) -> list[list[object]]:
    import web.intake as intake

    per = len(orders_in(data))
    spec = get_command(data["command"])
    assert spec is not None
    model, params = spec.params, data["params"]
    assert params_json(model, params) == models_json(model, params)
    rows = [row("params", size, best_us(partial(models_json, model, params), repeat, number),
                best_us(partial(params_json, model, params), repeat, number), per)]  # fmt: skip
    checker = intake.CommandIntake.__new__(intake.CommandIntake)  # _check needs no writer
    check = partial(checker._check, data, "sid")
    fast = best_us(check, repeat, number)
    intake.params_json = models_json  # the models alone, for the baseline
    try:
        slow = best_us(check, repeat, number)
    finally:
        intake.params_json = params_json
    rows.append(row("intake check", size, slow, fast, per))
    return rows


def reserve(journal: CommandJournal, frame: MessageFrame, command: str, encoded: str, before: bool) -> None:
    """One reservation of a new request id, as the web makes it (`before`: as it was made)."""
    # before, the web also escaped each envelope and sent it a second time: here as the id of
    # an earlier ack to journal (the same bytes on the wire, the same work in this process)
    acks = [{"request_id": escape_envelope(encoded), "ack_time_ms": 0.0}] if before else []
    journal.reserve_and_enqueue([(uuid.uuid4().hex, command, encoded)], "bench-queue", frame, acks)
    journal.client.ltrim("bench-queue", 0, 0)


def reserve_rows(repeat: int, number: int) -> list[list[object]]:
    import redis

    import web.intake as intake
    from workers.app import app

    rows = []
    checker = intake.CommandIntake.__new__(intake.CommandIntake)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], "bench-queue", "batch-1", "submit_orders")
    with tempfile.TemporaryDirectory() as home:
        server = PrivateRedis(Path(home))
        client = redis.Redis.from_url(server.start())
        try:
            journal = CommandJournal(client)
            for size, data in commands().items():
                pending = checker._check(data, "sid")
                assert isinstance(pending, intake.PendingCommand)
                calls = max(20, number // 4)
                before = cpu_us(partial(reserve, journal, frame, data["command"], pending.encoded, True),
                                repeat, calls)  # fmt: skip
                after = cpu_us(partial(reserve, journal, frame, data["command"], pending.encoded, False),
                               repeat, calls)  # fmt: skip
                rows.append(row("reserve script (web CPU)", size, before, after, len(orders_in(data))))
        finally:
            client.close()
            server.stop()
    return rows


def push_row(data: dict[str, Any], size: str, repeat: int, number: int) -> list[object]:
    results = [{"client_order_id": o["client_order_id"], "order_id": i, "status": "FILLED",
                "reject_reason": None, "filled_quantity": "0.00100000", "fill_price": "50000.00000000",
                "fee": "0.00000000", "duplicate": False} for i, o in enumerate(orders_in(data))]  # fmt: skip
    packet = "2" + fastjson.dumps(["command_result", {"request_id": "r", "result": {"results": results}}])
    message = {"method": "bulk", "messages": [{"method": "packet", "packet": packet}]}
    push = [b"message", b"flask-socketio", fastjson.dumps(message).encode()]
    return row("pub/sub push handler", size, best_us(partial(redis_py_handler, push), repeat, number),
               best_us(partial(as_is, push), repeat, number), len(results))  # fmt: skip


def redis_py_handler(response: Any) -> Any:
    """The work of redis-py 8.1's handler at any log level (its logger.debug call aside)."""
    _ = "Push response: " + str(response)
    return response


def as_is(response: Any) -> Any:
    return response


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    rows: list[list[object]] = []
    for size, data in commands().items():
        rows += validation_rows(data, size, args.repeat, args.number)
    rows += reserve_rows(args.repeat, args.number)
    for size, data in commands().items():
        rows.append(push_row(data, size, args.repeat, args.number))
    print_table(
        f"web CPU per command, before -> after (min of {args.repeat} runs)",
        ["step", "command", "before us", "after us", "us per order", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
