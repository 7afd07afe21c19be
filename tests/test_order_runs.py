"""Single orders that queue up behind each other run as one core batch in the engine worker
(issue 14 item 3: no Python object per order, one lock, one log entry), and every order's
outcome is exactly what it gets when sent alone; text_units is to_units for plain decimals."""

from __future__ import annotations

import json
import random
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis

from hean import _core, fastjson
from hean.celery_wire import OrderListJSON
from hean.command_journal import CommandJournal
from hean.engine import text_units, to_units
from hean.messages import CommandResult, ErrorInfo, QueuedEnvelope
from support import Client, wait_for
from workers.execution import result_message
from workers.shard import LOG_KEY


def test_text_units_is_to_units() -> None:
    rng = random.Random(7)
    texts = ["0", "1", "0.00000001", "0.1", "50000.5", "999999999.99999999", "92233720368.54775807"]
    for _ in range(20_000):
        whole = rng.choice([0, rng.randrange(10), rng.randrange(10**6), rng.randrange(10**11)])
        places = rng.randrange(9)
        frac = f".{rng.randrange(10**places):0{places}d}" if places else ""
        texts.append(f"{whole}{frac}")

    def outcome(convert: Any, text: str) -> int | str:
        try:
            return int(convert(text))
        except ValueError:
            return "refused"

    for text in texts:
        assert outcome(text_units, text) == outcome(to_units, text), text
    # not plain: the Decimal path decides (and names the field)
    assert text_units("1E+3") == to_units("1E+3")
    for bad in ("0.000000001", "92233720368.54775808", "abc", "-1x"):
        with pytest.raises(ValueError):
            to_units(bad, "q")
        with pytest.raises(ValueError, match="q"):
            text_units(bad, "q")


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"order": {"status": "FILLED"}}, None),
        (None, {"code": "order_rejected", "message": "m", "field": "order"}),
    ],
)
def test_a_run_result_is_the_command_result_message(result: Any, error: dict[str, Any] | None) -> None:
    envelope = QueuedEnvelope("r-1", "submit_order", {}, None, 1.0)
    expected = CommandResult(
        request_id="r-1",
        command="submit_order",
        success=error is None,
        result=result,
        error=None if error is None else ErrorInfo(**error),
        execution_time_ms=0.25,
    ).model_dump(mode="json")
    assert result_message(envelope, result, error, 0.25) == expected


def orders_for(sym: str, tag: str) -> list[dict[str, Any]]:
    def order(n: int, **params: Any) -> dict[str, Any]:
        params = {"client_order_id": f"{sym}-{n}", "symbol": sym, **params}
        return {"command": "submit_order", "params": params, "request_id": f"{tag}-{n}-{uuid.uuid4().hex}"}

    return [
        order(1, side="BUY", quantity="2"),  # fills at the ask
        order(2, side="SELL", quantity="0.5"),  # fills at the bid
        order(3, side="BUY", quantity="1", order_type="LIMIT", price="90"),  # rests
        order(4, side="SELL", quantity="1", order_type="LIMIT", price="101", time_in_force="IOC"),  # expires
        order(5, side="BUY", quantity="0.001"),  # under the minimum notional: rejected
        order(1, side="BUY", quantity="2"),  # the same client order id again: its first outcome
        order(6, side="BUY", quantity="0.123456789"),  # more than 8 decimals: refused at the edge
        order(7, side="SELL", quantity="3"),
    ]


def comparable(result: dict[str, Any], sym: str) -> dict[str, Any]:
    """A result with what differs between two symbols and two runs taken out."""
    text = json.dumps({k: v for k, v in result.items() if k not in ("request_id", "execution_time_ms")})
    out = json.loads(text.replace(sym, "SYM"))
    if out.get("result") and "order" in out["result"]:
        out["result"]["order"].pop("order_id")
    return out


def test_queued_single_orders_run_as_one_batch_with_the_outcomes_each_gets_alone(
    system: dict[str, Any], client: Client
) -> None:
    for command in ("stop", "reset_kill_switch", "start"):  # RUNNING, whatever earlier tests left
        client.command({"command": command, "request_id": uuid.uuid4().hex})
    alone_sym, run_sym = (f"R{uuid.uuid4().hex[:6].upper()}USDT" for _ in range(2))
    for sym in (alone_sym, run_sym):
        market = {"symbol": sym, "bid": "99.5", "ask": "100.5", "last": "100"}
        client.command({"command": "update_market", "params": market, "request_id": uuid.uuid4().hex})

    alone = []
    for body in orders_for(alone_sym, "alone"):  # one at a time: each its own batch
        ack = client.command(body)
        alone.append(client.result_for(body["request_id"]) if ack["accepted"] else {"refused": ack["error"]})

    store = redis.Redis.from_url(system["env"]["REDIS_URL"])
    log_before = store.xrevrange(LOG_KEY, count=1)
    # hold the engine worker for a moment, so that the orders queue up behind the nap
    nap = {"command": "engine_nap", "params": {"seconds": 1}, "request_id": uuid.uuid4().hex}
    client.sio.emit("command", nap)
    # the nap running before the orders are sent: none shares its batch (the web's writer may
    # enqueue the first orders together with it, and they would run right after it, alone)
    journal = CommandJournal(store)
    wait_for(lambda: journal.state(nap["request_id"]) == "started", 30, "the nap to start")
    bodies = orders_for(run_sym, "run")
    for body in bodies:  # all sent at once: on a loaded machine, acks one by one outlast the nap
        client.sio.emit("command", body)
    wanted, by_id = {b["request_id"] for b in bodies}, {}
    while not wanted <= by_id.keys():
        event = client.acks.get(timeout=30)
        by_id[event["request_id"]] = event
    acks = [by_id[b["request_id"]] for b in bodies]
    queued = [b for b, a in zip(bodies, acks, strict=True) if a["accepted"]]
    assert client.result_for(nap["request_id"])["success"]  # results come in the order run
    results = iter([client.result_for(b["request_id"]) for b in queued])
    run = [next(results) if a["accepted"] else {"refused": a["error"]} for a in acks]

    assert [comparable(r, run_sym) for r in run] == [comparable(r, alone_sym) for r in alone]
    # ...and they did run as one core batch: one submit_orders entry logged for all of them
    entries = store.xrange(LOG_KEY, min=f"({log_before[0][0].decode()}" if log_before else "-")
    batched = [logged_client_ids(f) for _, f in entries if f[b"cmd"] == b"submit_orders"]
    run_ids = {b["params"]["client_order_id"] for b in queued}
    assert any(set(ids) == run_ids for ids in batched), (run_ids, batched)
    assert Decimal(run[0]["result"]["order"]["filled_quantity"]) == 2
    store.close()


def logged_client_ids(fields: dict[bytes, bytes]) -> list[str]:
    """The client order ids of a `submit_orders` entry of the engine log, in either form."""
    if b"columns" in fields:  # read by the core: its binary form
        return [row[0] for row in _core.OrderColumns.from_bytes(fields[b"columns"]).rows()]
    return [order["client_order_id"] for order in json.loads(fields[b"params"])["orders"]]


def install_fresh_shard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A shard with a fresh, running engine (no Redis: nothing to recover) for the handlers."""
    from hean.engine import TradingEngine
    from workers import engine as handlers
    from workers.shard import EngineShard

    fresh = EngineShard()
    fresh._engine = TradingEngine()
    fresh._engine.update_market("BTCUSDT", "99.5", "100.5", "100")
    fresh._engine.start()
    monkeypatch.setattr(handlers, "SHARD", fresh)
    return fresh


def one_by_one_and_as_a_run(
    orders: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[Any]]:
    """Each order through submit_order's own handler (pydantic, OrderRequest, one core call)
    on one fresh engine, and all of them through its many-handler on another."""
    from hean.commands import CommandError, error_from
    from hean.commands.params import OrderParams
    from workers import engine as handlers

    install_fresh_shard(monkeypatch)
    alone: list[Any] = []
    for params in orders:
        try:
            alone.append((handlers.submit_order(OrderParams.model_validate(params)), None))
        except CommandError as exc:
            alone.append((None, error_from(exc).model_dump()))
    install_fresh_shard(monkeypatch)
    return alone, handlers.submit_order_run(orders)


def test_the_many_handler_gives_each_order_what_its_own_handler_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def order(n: int, **params: Any) -> dict[str, Any]:
        return {"client_order_id": f"c-{n}", "symbol": "BTCUSDT", **params}

    orders = [
        order(1, side="BUY", quantity="2"),
        order(2, side="SELL", quantity="0.5"),
        order(3, side="BUY", quantity="1", order_type="LIMIT", price="90"),
        order(4, side="SELL", quantity="1", order_type="LIMIT", price="101", time_in_force="IOC"),
        order(5, side="BUY", quantity="0.001"),  # under the minimum notional
        order(1, side="BUY", quantity="2"),  # a repeated client order id
        order(6, side="SELL", quantity="1", order_type="LIMIT", price="99.5"),  # crosses the bid
        order(7, side="BUY", quantity="600"),  # over the maximum notional
    ]
    alone, run = one_by_one_and_as_a_run(orders, monkeypatch)
    assert on_the_wire(run) == on_the_wire(alone)  # the run's results are JSON the core wrote
    assert sum(error is not None for _, error in run) == 2


def test_a_run_the_core_refuses_is_refused_whole_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from hean.commands import RunRefused
    from workers import engine as handlers

    good = {"client_order_id": "g", "symbol": "BTCUSDT", "side": "BUY", "quantity": "1"}
    for bad in ({**good, "client_order_id": "x" * 65}, {**good, "quantity": "0"}, {**good, "side": "UP"}):
        shard = install_fresh_shard(monkeypatch)
        with pytest.raises(RunRefused):
            handlers.submit_order_run([good, bad])
        assert shard.engine.status().orders_submitted == 0
        assert shard.log.pending == []


def test_submit_orders_runs_give_what_each_command_gives_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from hean.commands.params import OrdersParams
    from workers import engine as handlers

    def order(n: int, **params: Any) -> dict[str, Any]:
        return {"client_order_id": f"b-{n}", "symbol": "BTCUSDT", "side": "BUY", "quantity": "1", **params}

    commands = [
        {"orders": [order(1), order(2, side="SELL", quantity="0.5"), order(3, quantity="0.001")]},
        {"orders": [order(1), order(4, order_type="LIMIT", price="90")]},  # b-1 again: its first outcome
    ]
    install_fresh_shard(monkeypatch)
    alone = [handlers.submit_orders(OrdersParams.model_validate(c)) for c in commands]
    install_fresh_shard(monkeypatch)
    run = handlers.submit_orders_run(commands)
    assert on_the_wire(run) == on_the_wire([(result, None) for result in alone])
    # the lists as the engine worker reads them off its queue: JSON text (hean.celery_wire),
    # read into columns, or parsed and read the general way (a quantity as a number)
    general = {"orders": [order(5, quantity=2)]}
    alone.append(handlers.submit_orders(OrdersParams.model_validate(general)))
    install_fresh_shard(monkeypatch)
    as_text = [{"orders": OrderListJSON(orjson.dumps(c["orders"]))} for c in [*commands, general]]
    run = handlers.submit_orders_run(as_text)
    assert on_the_wire(run) == on_the_wire([(result, None) for result in alone])


def test_an_order_list_read_from_text_is_refused_as_the_parsed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from hean.commands import RunRefused
    from workers import engine as handlers

    good = {"client_order_id": "g", "symbol": "BTCUSDT", "side": "BUY", "quantity": "1"}

    def outcome(params: dict[str, Any]) -> Any:
        shard = install_fresh_shard(monkeypatch)
        try:
            ran = on_the_wire(handlers.submit_orders_run([{"orders": [good]}, params]))
        except RunRefused as exc:
            ran = ("refused", str(exc))
        return ran, shard.engine.status().orders_submitted, len(shard.log.pending)

    for orders in ([], [good] * 1_001, "no list", [{**good, "side": "UP"}], [{**good, "quantity": "0"}]):
        parsed = outcome({"orders": orders})
        assert outcome({"orders": OrderListJSON(orjson.dumps(orders))}) == parsed
        if orders == [{**good, "quantity": "0"}]:  # the core refuses that command alone
            assert parsed[0][1][1]["code"] == "invalid_params"
        else:
            assert parsed == (("refused", parsed[0][1]), 0, 0)


def on_the_wire(outcomes: list[Any]) -> Any:
    """Outcomes as the journal and the result packets carry them (encoded by hean.fastjson)."""
    return json.loads(fastjson.dumps([list(outcome) for outcome in outcomes]))
