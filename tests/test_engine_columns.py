"""The engine worker's columnar path for orders (issue 14 item 3) against the Python code it
replaces: the core reads the edge's order params into columns exactly as
`OrderBatch.append_params` does (same values, the same error for what it refuses), and writes a
batch's per-order results as the very bytes orjson writes for `BatchResult.to_dict()`."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from hean import _core, fastjson
from hean.engine import OrderBatch, TradingEngine, orders_from_params

_ABSENT = object()

PLAIN_AMOUNTS = ["0.001", "1", "2", "0.5", "100", "99.5", "101", "50000", "0.00000001", "7.25"]
ODD_AMOUNTS: list[Any] = [
    "0",
    "0.000000001",
    "1e3",
    "1E+3",
    " 1",
    "1 ",
    "-1",
    "-0.5",
    ".5",
    "1.",
    "1.2.3",
    "abc",
    "",
    "\u0661\u0662",
    "99999999999999999999",
    "92233720368.54775807",
    "92233720368.54775808",
    "9223372036854775807",
    "1000000001",
    "NaN",
    "Infinity",
    1,
    0,
    -3,
    1.5,
    float("nan"),
    True,
    None,
    [],
    {"v": 1},
]
IDS: list[Any] = [
    "c-1",
    'a"b',
    "back\\slash",
    "tab\there",
    "nl\n",
    "\x01ctl",
    "\u00e9t\u00e9",
    "\U0001f600",
    "/slash",
    "x" * 64,
]
ODD_IDS: list[Any] = ["", "x" * 65, "\u00e9" * 33, "\ud800", 5, None, ["c"], b"c"]


def _pick(rng: random.Random, plain: list[Any], odd: list[Any], p_odd: float) -> Any:
    return rng.choice(odd) if rng.random() < p_odd else rng.choice(plain)


def random_order(rng: random.Random, p_odd: float) -> Any:
    """An order's params: mostly the plain form the edge sends, sometimes anything."""
    if rng.random() < p_odd / 10:
        return rng.choice(["not a dict", ["BUY"], None, 3])
    order: dict[str, Any] = {}
    fields: dict[str, Any] = {
        "client_order_id": rng.choice(ODD_IDS)
        if rng.random() < p_odd
        else rng.choice(IDS)[:56] + str(rng.randrange(10**6)),
        "symbol": _pick(rng, ["BTCUSDT", "ETH", "S\u00ffM"], ["", "y" * 65, 7, None], p_odd),
        "side": _pick(rng, ["BUY", "SELL"], ["buy", "LONG", None, 0, "BUY "], p_odd),
        "quantity": _pick(rng, PLAIN_AMOUNTS, ODD_AMOUNTS, p_odd),
    }
    kind = rng.choice(["MARKET", "LIMIT", _ABSENT])
    if rng.random() < p_odd:
        kind = rng.choice(["limit", None, 1, "LIMIT\n"])
    fields["order_type"] = kind
    limit = kind == "LIMIT"
    price: Any = _pick(rng, PLAIN_AMOUNTS, ODD_AMOUNTS, p_odd) if limit else rng.choice([_ABSENT, None])
    if rng.random() < p_odd:  # a price where none belongs, or none where one does
        price = rng.choice([_ABSENT, None, "100"])
    fields["price"] = price
    fields["time_in_force"] = rng.choice(["GTC", "IOC", _ABSENT])
    if rng.random() < p_odd:
        fields["time_in_force"] = rng.choice(["gtc", None, "FOK", 2])
    for name, value in fields.items():
        if value is not _ABSENT and not (rng.random() < p_odd / 4):  # sometimes a field is missing
            order[name] = value
    if rng.random() < p_odd / 3:
        order["extra"] = "ignored"
    return order


def read_by_python(orders: list[Any]) -> Any:
    """What the Python reader gives: the rows, or the error it raises."""
    batch = OrderBatch()
    try:
        for params in orders:
            batch.append_params(params)
    except Exception as exc:
        return (type(exc), str(exc))
    return batch.rows()


def read_by_the_core(orders: list[Any]) -> Any:
    try:
        columns = orders_from_params(orders)
    except Exception as exc:
        return (type(exc), str(exc))
    return columns.rows()


def test_the_core_reads_order_params_as_append_params_does() -> None:
    rng = random.Random(14)
    read_in_core = plain = 0
    for round_ in range(6_000):
        p_odd = 0.0 if round_ % 3 == 0 else rng.choice([0.02, 0.1, 0.4])
        orders = [random_order(rng, p_odd) for _ in range(rng.choice([1, 1, 2, 5, 40]))]
        expected = read_by_python(orders)
        assert read_by_the_core(orders) == expected, orders
        columns = _core.read_order_params(orders)
        if columns is not None:
            read_in_core += 1
            assert columns.rows() == expected, orders  # the core never takes what Python refuses
        if p_odd == 0.0:
            plain += 1
            assert columns is not None, orders  # the edge's form is read by the core
    assert read_in_core > plain  # and so are many orders from the mixed rounds
    assert _core.read_order_params("not a list") is None
    assert _core.read_order_params([]).rows() == []


def engine_for(rng: random.Random) -> TradingEngine:
    engine = TradingEngine(
        starting_equity=rng.choice([1_000, 100_000]),
        risk_limits={
            "fee_rate": rng.choice(["0", "0.001", "0.0007"]),
            "max_notional": rng.choice(["500", "50000"]),
            "max_open_orders": rng.choice([3, 50]),
            "max_orders_per_second": rng.choice([0, 0, 30]),
            "max_trade_risk_pct": rng.choice(["1", "100"]),
        },
    )
    engine.update_market("BTCUSDT", "99.5", "100.5", "100")
    engine.update_market("ETH", "10", "10.25", "10.1")
    if rng.random() < 0.9:
        engine.start()
    return engine


def test_results_json_is_the_json_of_to_dict() -> None:
    rng = random.Random(3)
    statuses: set[str] = set()
    reasons: set[str | None] = set()
    checked = 0
    for _ in range(300):
        engine = engine_for(rng)
        for _ in range(rng.choice([1, 3])):
            orders = [random_order(rng, 0.0) for _ in range(rng.choice([1, 10, 100]))]
            orders += [dict(o) for o in rng.sample(orders, min(2, len(orders)))]  # duplicates
            try:
                result = engine.submit_batch(orders_from_params(orders), now_ns=rng.randrange(1, 10**12))
            except ValueError:  # a bound the core checks (an amount of 0): nothing applied
                continue
            rows = result.to_dict()["results"]
            assert result.results_json() == orjson.dumps(rows)
            assert result.results_json() == fastjson.dumps(rows).encode()
            for i in rng.sample(range(result.count), min(3, result.count)):
                assert result.result_json(i) == orjson.dumps(result.result(i).to_dict())
                assert result.client_order_id(i) == rows[i]["client_order_id"]
                assert result.reject_reason(i) == result.result(i).reject_reason
            statuses |= {r["status"] for r in rows}
            reasons |= {r["reject_reason"] for r in rows}
            checked += result.count
    assert {"FILLED", "RESTING", "EXPIRED", "REJECTED"} <= statuses
    assert {None, "ENGINE_STOPPED", "MAX_NOTIONAL", "MAX_OPEN_ORDERS", "THROTTLED"} <= reasons
    assert checked > 10_000


def test_results_json_of_the_typed_paths() -> None:
    """The same bytes whichever way the batch came in (columns from Python or the core)."""
    orders = [
        {"client_order_id": 'q"1\u00e9', "symbol": "BTCUSDT", "side": "BUY", "quantity": "0.5"},
        {"client_order_id": "r", "symbol": "NOPE", "side": "SELL", "quantity": "1"},
        {
            "client_order_id": "s",
            "symbol": "BTCUSDT",
            "side": "SELL",
            "quantity": "1",
            "order_type": "LIMIT",
            "price": "101",
            "time_in_force": "GTC",
        },
    ]
    results = []
    for columns in (orders, OrderBatch.from_orders(orders), orders_from_params(orders)):
        engine = TradingEngine()
        engine.update_market("BTCUSDT", "99.5", "100.5", "100")
        engine.start()
        results.append(engine.submit_batch(columns, now_ns=1))
    assert isinstance(orders_from_params(orders), _core.OrderColumns)
    assert len({r.results_json() for r in results}) == 1
    assert results[0].results_json() == orjson.dumps(results[0].to_dict()["results"])
    assert [r["status"] for r in orjson.loads(results[0].results_json())] == ["FILLED", "REJECTED", "RESTING"]
    with pytest.raises(IndexError):
        results[0].result_json(3)
    assert results[0].client_order_id(-3) == 'q"1\u00e9'


def test_a_fragment_is_written_as_it_is() -> None:
    value = {"a": 1, "results": fastjson.fragment(b'[{"x":"\\u0001"}]')}
    assert fastjson.dumps(value) == '{"a":1,"results":[{"x":"\\u0001"}]}'


def test_a_replayed_log_entry_rebuilds_the_same_engine() -> None:
    """Batches logged by the shard (read by the core: in its binary form; read by Python: as
    JSON) replay, as a restart replays them, to the same outcomes and the same engine."""
    from workers.shard import EngineShard, replay_entry

    rng = random.Random(9)
    shard = EngineShard()
    shard._engine = engine_for(random.Random(1))
    replayed = engine_for(random.Random(1))
    forms = set()
    for i in range(40):
        orders = [random_order(rng, 0.0) for _ in range(rng.choice([1, 50]))]
        if i % 4 == 0:
            orders[0]["quantity"] = 2  # a number: read by OrderBatch.append_params, logged as JSON
        try:
            result = shard.apply_order_batch(orders, orders_from_params(orders))
        except ValueError:  # refused whole: nothing applied, nothing logged
            continue
        entry = shard.log.pending[-1][1]
        fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in entry.items()}
        forms.add(b"columns" in fields)
        again, _ = replay_entry(replayed, fields)
        assert again.results_json() == result.results_json()
    assert forms == {True, False}
    assert replayed.snapshot() == shard.engine.snapshot()


def test_the_binary_form_of_orders_reads_back_and_refuses_anything_else() -> None:
    rng = random.Random(10)
    for _ in range(300):
        orders = [random_order(rng, 0.0) for _ in range(rng.choice([0, 1, 30]))]
        columns = _core.read_order_params(orders)
        assert columns is not None
        data = columns.to_bytes()
        assert _core.OrderColumns.from_bytes(data).rows() == columns.rows()
        with pytest.raises(ValueError, match="columns: "):
            _core.OrderColumns.from_bytes(data[: rng.randrange(len(data))])
    with pytest.raises(ValueError, match="columns: not HCOLS1"):
        _core.OrderColumns.from_bytes(b'{"orders": []}')
