"""The web process's CPU per command on the intake path, step by step, against what each step
replaced, in one run (in process, min of --repeat runs of --number calls each: the machine is
shared, and the minimum is the figure least disturbed by the others).

Steps, for a 100-order `submit_orders` command and a single `submit_order`:
- params: validate and encode the params (`hean.commands.fast_params.params_json`) against the
  models (`model_validate` + `model_dump_json`), which it replaced for orders;
- intake check: `CommandIntake._check` (request, params, envelope) with the fast path and with
  the models;
- envelope escape: the envelope escaped for the broker message's body string
  (`hean.celery_wire.escape_envelope`, orjson) against the standard library's encoder;
- pub/sub push: what redis-py 8.1's own pub/sub handler spent per result message (building a
  debug line from the message, redis/redis-py#4230) against the listener's own handler;
- result message decode: a worker's result message read by hean.fastjson against
  `web.bus.decode_message` (orjson alone for messages holding only text);
- reservation: the writer's reserve-and-enqueue script on a private Redis, in a child process
  under eventlet as the web runs it (wall time, Redis's own included), on a connection checked
  out of the process's pool each time against the writer's own (`hean.redis_client.OwnConnection`);
  and, in a second table, the script's own time inside Redis beside the Redis calls it made.

Never fails on speed. Usage: python benchmarks/bench_intake.py [--repeat R] [--number N]
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["--reservations"]:  # the child: eventlet first
    import eventlet

    eventlet.monkey_patch()

import argparse
import json
import subprocess
import tempfile
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import print_table

from hean import fastjson
from hean.celery_wire import escape_envelope
from hean.commands import get_command
from hean.commands.fast_params import params_json
from hean.messages import PACKET_METHOD
from hean.redis_server import PrivateRedis
from web.bus import decode_message

#: Rounds of --number reservations timed inside Redis; the least disturbed one is printed.
INSIDE_ROUNDS = 5


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


def escape_rows(repeat: int, number: int) -> list[list[object]]:
    import web.intake as intake

    rows = []
    checker = intake.CommandIntake.__new__(intake.CommandIntake)
    for size, data in commands().items():
        pending = checker._check(data, "sid")
        assert isinstance(pending, intake.PendingCommand)
        assert json.loads(f'"{escape_envelope(pending.encoded)}"') == pending.encoded
        before = best_us(partial(stdlib_escape, pending.encoded), repeat, number)
        after = best_us(partial(escape_envelope, pending.encoded), repeat, number)
        rows.append(row("envelope escape", size, before, after, len(orders_in(data))))
    return rows


def stdlib_escape(encoded: str) -> str:
    """What `escape_envelope` did before: the standard library's encoder."""
    return json.dumps(encoded)[1:-1]


def push_row(data: dict[str, Any], size: str, repeat: int, number: int) -> list[object]:
    results = [{"client_order_id": o["client_order_id"], "order_id": i, "status": "FILLED",
                "reject_reason": None, "filled_quantity": "0.00100000", "fill_price": "50000.00000000",
                "fee": "0.00000000", "duplicate": False} for i, o in enumerate(orders_in(data))]  # fmt: skip
    packet = "2" + fastjson.dumps(["command_result", {"request_id": "r", "result": {"results": results}}])
    message = {"method": "bulk", "messages": [{"method": "packet", "packet": packet}]}
    push = [b"message", b"flask-socketio", fastjson.dumps(message).encode()]
    return row("pub/sub push handler", size, best_us(partial(redis_py_handler, push), repeat, number),
               best_us(partial(as_is, push), repeat, number), len(results))  # fmt: skip


def decode_row(data: dict[str, Any], size: str, repeat: int, number: int) -> list[object]:
    """A worker's result message as the web reads it off the queue: by hean.fastjson (which scans
    for long digit runs before trusting orjson) against web.bus.decode_message."""
    results = [{"client_order_id": o["client_order_id"], "order_id": i, "status": "FILLED",
                "filled_quantity": "0.00100000", "fill_price": "50000.00000000"}
               for i, o in enumerate(orders_in(data))]  # fmt: skip
    packet = "2" + fastjson.dumps(["command_result", {"request_id": "r", "result": {"results": results}}])
    message = {"method": PACKET_METHOD, "packet": packet, "room": "sid", "request_id": "r"}
    raw = fastjson.dumps(message).encode()
    assert decode_message(raw, fastjson.loads) == fastjson.loads(raw)
    before = best_us(partial(fastjson.loads, raw), repeat, number)
    after = best_us(partial(decode_message, raw, fastjson.loads), repeat, number)
    return row("result message decode", size, before, after, len(results))


def redis_py_handler(response: Any) -> Any:
    """The work of redis-py 8.1's handler at any log level (its logger.debug call aside)."""
    _ = "Push response: " + str(response)
    return response


def as_is(response: Any) -> Any:
    return response


def reservations(repeat: int, number: int) -> None:
    """(In the child, under eventlet) print the reservation timings as JSON: per command size,
    [pooled us, own connection us]."""
    import redis

    import web.intake as intake
    from hean.celery_wire import batch_frame
    from hean.command_journal import CommandJournal
    from hean.topology import BATCH_TASKS, ENGINE_QUEUE
    from workers.app import app

    checker = intake.CommandIntake.__new__(intake.CommandIntake)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], "bench-queue", "batch-1", "submit_orders")
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as home:
        server = PrivateRedis(Path(home))
        client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(server.start()))
        try:
            pooled = CommandJournal(client)
            own = pooled.with_own_connection()
            for size, data in commands().items():
                pending = checker._check(data, "sid")
                assert isinstance(pending, intake.PendingCommand)
                out[size] = [best_us(partial(reserve, journal, frame, data["command"], pending.encoded),
                                     repeat, number) for journal in (pooled, own)]  # fmt: skip
                client.delete("bench-queue")
                one = partial(reserve, own, frame, data["command"], pending.encoded)
                out[size] += inside_redis(client, one, number)
                client.delete("bench-queue")
        finally:
            client.close()
            server.stop()
    print(json.dumps(out))


def inside_redis(client: Any, call: Callable[[], None], number: int) -> list[float]:
    """Redis's own time per `call` (a reservation: one script run), in us, in the least disturbed
    of INSIDE_ROUNDS rounds of `number` calls: the whole script, and the calls it made (Redis's
    commandstats: a script's time includes its calls')."""
    measured: list[list[float]] = []  # [script, its calls] per round
    for _ in range(INSIDE_ROUNDS):
        client.config_resetstat()
        for _ in range(number):
            call()
        stats = client.info("commandstats")
        script = int(stats.pop("cmdstat_evalsha", {"usec": 0})["usec"])
        inner = sum(int(v["usec"]) for name, v in stats.items() if name != "cmdstat_config|resetstat")
        measured.append([script / number, inner / number])
    return min(measured)  # the round whose script took least


def reserve(journal: Any, frame: Any, command: str, encoded: str) -> None:
    journal.reserve_and_enqueue([(uuid.uuid4().hex, command, encoded)], "bench-queue", frame)


def reservation_rows(repeat: int, number: int) -> tuple[list[list[object]], dict[str, list[float]]]:
    """The reservation rows of the main table, and the child's timings as it reported them."""
    child = subprocess.run(
        [sys.executable, __file__, "--reservations", str(repeat), str(max(20, number // 4))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    timings = json.loads(child.stdout.strip().splitlines()[-1])
    rows = [row("reservation (eventlet, wall)", size, pooled, own, len(orders_in(data)))
            for (size, data) in commands().items() for pooled, own, *_ in [timings[size]]]  # fmt: skip
    return rows, timings


def inside_redis_rows(timings: dict[str, list[float]]) -> list[list[object]]:
    """Per command size, us per reservation: the reservation script's own time inside Redis, the
    calls it made, and the rest (the script's run: its arguments, Lua, the reply, and writing
    its calls to the append-only file)."""
    return [[size, f"{script:.1f}", f"{inner:.1f}", f"{script - inner:.1f}"]
            for size, (_, _, script, inner) in timings.items()]  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--reservations"]:
        reservations(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    rows: list[list[object]] = []
    for size, data in commands().items():
        rows += validation_rows(data, size, args.repeat, args.number)
    rows += escape_rows(args.repeat, args.number)
    for size, data in commands().items():
        rows.append(push_row(data, size, args.repeat, args.number))
        rows.append(decode_row(data, size, args.repeat, args.number))
    reserved, timings = reservation_rows(args.repeat, args.number)
    rows += reserved
    print_table(
        f"web CPU per command, before -> after (min of {args.repeat} runs)",
        ["step", "command", "before us", "after us", "us per order", "ratio"],
        rows,
    )
    print_table(
        f"the reservation script inside Redis, us per reservation (the least of {INSIDE_ROUNDS} rounds "
        "of --number)",
        ["command", "script", "its Redis calls", "the rest: arguments, Lua, reply, AOF"],
        inside_redis_rows(timings),
    )


if __name__ == "__main__":
    main()
