"""One source of truth for limits: the web's schemas take every bound from the C++ core's table,
and at each bound and just past it the schema and the core agree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hean import _core
from hean.commands import describe_commands
from hean.commands.params import MarketParams, OrderParams, RiskAdjustParams
from hean.limits import BOUNDS, BOUNDS_FILE, RISK_LIMIT_NAMES, Bound, core_bounds_text, plain

UNIT = Decimal("1e-8")


def test_the_shipped_bounds_are_the_cores() -> None:
    # fails when the core's table changes without `python -m hean.limits --write`
    assert BOUNDS_FILE.read_text() == core_bounds_text()
    assert set(RISK_LIMIT_NAMES) | {"client_order_id", "symbol", "quantity", "price"} == set(BOUNDS)


def edges(bound: Bound) -> list[tuple[Any, bool]]:
    """(value, allowed) at each edge of `bound` and one step past it, in the field's units."""
    step: Any = UNIT if bound.kind == "fixed_point" else 1
    low, high = bound.low, bound.high
    first = low + step if bound.min_exclusive else low
    return [(first, True), (first - step, False), (high, True), (high + step, False)]


def core_units(bound: Bound, value: Any) -> int:
    return int(Decimal(value).scaleb(8)) if bound.kind == "fixed_point" else int(value)


def schema_accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def core_accepts_limit(name: str, units: int) -> bool:
    limits = _core.RiskLimits()
    setattr(limits, name, units)
    # min must not exceed max (a rule across fields): give each room to reach its own bounds
    if name == "min_notional":
        limits.max_notional = _core.MAX_CASH
    if name == "max_notional":
        limits.min_notional = 0
    try:
        limits.validate()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", RISK_LIMIT_NAMES)
def test_every_risk_limit_agrees_at_and_past_its_bounds(name: str) -> None:
    bound = BOUNDS[name]
    for value, allowed in edges(bound):
        data = {name: str(value) if bound.kind == "fixed_point" else value}
        assert schema_accepts(RiskAdjustParams, data) is allowed, (name, value)
        assert core_accepts_limit(name, core_units(bound, value)) is allowed, (name, value)


def core_accepts_order(**changes: Any) -> bool:
    order: dict[str, Any] = {
        "client_order_id": "c-1",
        "symbol": "BTCUSDT",
        "side": _core.Side.BUY,
        "order_type": _core.OrderType.LIMIT,
        "quantity": 1 * _core.SCALE,
        "price": 1 * _core.SCALE,
    }
    order.update(changes)
    engine = _core.Engine()
    try:
        engine.submit_order(**order)
    except ValueError:
        return False
    return True


ORDER = {
    "client_order_id": "c-1",
    "symbol": "BTCUSDT",
    "side": "BUY",
    "quantity": "1",
    "order_type": "LIMIT",
    "price": "1",
}


@pytest.mark.parametrize("name", ["quantity", "price"])
def test_order_amounts_agree_at_and_past_their_bounds(name: str) -> None:
    bound = BOUNDS[name]
    for value, allowed in edges(bound):
        data = {**ORDER, name: str(value)}
        assert schema_accepts(OrderParams, data) is allowed, (name, value)
        assert core_accepts_order(**{name: core_units(bound, value)}) is allowed, (name, value)


@pytest.mark.parametrize("name", ["client_order_id", "symbol"])
def test_order_identifiers_agree_at_and_past_their_lengths(name: str) -> None:
    bound = BOUNDS[name]
    for length, allowed in edges(bound):
        text = "x" * int(length)
        assert schema_accepts(OrderParams, {**ORDER, name: text}) is allowed, (name, length)
        assert core_accepts_order(**{name: text}) is allowed, (name, length)


@pytest.mark.parametrize("field", ["bid", "ask", "last"])
def test_market_prices_agree_at_and_past_the_price_bounds(field: str) -> None:
    bound = BOUNDS["price"]
    for value, allowed in edges(bound):
        tick = {"symbol": "BTCUSDT", "bid": "1", "ask": "1", "last": "1", field: str(value)}
        if field != "last":  # keep bid <= ask, a separate rule
            tick["bid"] = tick["ask"] = str(value)
        schema_ok = schema_accepts(MarketParams, tick)
        engine = _core.Engine()
        units = {k: core_units(bound, v) for k, v in tick.items() if k != "symbol"}
        try:
            engine.update_market("BTCUSDT", units["bid"], units["ask"], units["last"])
            core_ok = True
        except ValueError:
            core_ok = False
        assert schema_ok is allowed and core_ok is allowed, (field, value, schema_ok, core_ok)


def test_list_commands_shows_the_bounds() -> None:
    commands = {c["name"]: c for c in describe_commands()}
    risk = commands["risk_adjust"]["params"]["properties"]
    leverage = next(s for s in risk["max_leverage"]["anyOf"] if s.get("type") == "number")
    assert leverage["exclusiveMinimum"] == 0 and leverage["maximum"] == 1000
    orders = next(s for s in risk["max_open_orders"]["anyOf"] if s.get("type") == "integer")
    assert (orders["minimum"], orders["maximum"]) == (0, 1_000_000)
    order = commands["submit_order"]["params"]["properties"]
    assert order["client_order_id"]["maxLength"] == 64


def test_bounds_read_as_a_person_writes_them() -> None:
    """Bounds reach error messages as str(): "1000", "0.1", never "1E+3" (the console shows
    these messages at the risk form's fields)."""
    assert [str(plain(Decimal(text))) for text in ("1E+3", "1000.00", "0.10", "0", "1.5E+2")] == [
        "1000",
        "1000",
        "0.1",
        "0",
        "150",
    ]
    for bound in BOUNDS.values():
        assert "E" not in f"{bound.low}{bound.high}", bound
    with pytest.raises(ValidationError) as failed:
        RiskAdjustParams(max_leverage="1001")
    assert "less than or equal to 1000" in str(failed.value) and "E+" not in str(failed.value)
