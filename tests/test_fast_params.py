"""The orders' fast path (hean/commands/fast_params.py) is the models, byte for byte: on any
params, `params_json` gives the text `model_dump_json(exclude_unset=True)` gives, or raises the
models' own ValidationError; and it is taken for the orders clients send."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hean.commands.fast_params import amount_pattern, fast_params_json, params_json
from hean.commands.params import MAX_ORDERS_PER_COMMAND, OrderParams, OrdersParams
from hean.limits import BOUNDS, Bound

MISSING = object()

canonical_ids = st.from_regex(r"[A-Za-z0-9._:/-]{1,64}", fullmatch=True)
canonical_amounts = st.one_of(
    st.integers(min_value=1, max_value=999_999_999).map(str),
    st.builds(
        lambda whole, frac: f"{whole}.{frac}",
        st.integers(min_value=0, max_value=999_999_999),
        st.from_regex(r"[0-9]{1,8}", fullmatch=True),
    ).filter(lambda text: Decimal(text) >= Decimal("0.000001") and Decimal(text) > 0),
)
ODD_AMOUNTS = [
        "0", "0.0", "00.1", "01", "1.", ".5", "1e3", "1E-7", "0.0000001", "0.00000001", "0.000001",
        "0.0000010", "1.123456789", "1.100000000", "1000000000", "1000000000.0", "1000000000.00000001",
        "999999999.99999999", " 1", "1 ", "+1", "-1", "1_000", "NaN", "inf", "\u0661", "1\n", "",
        1, 0, -1, 5, 0.1, 1e-7, 1e20, 2.5, True, None, [], {},
]  # fmt: skip
ODD_IDS = ["", "a" * 64, "a" * 65, "a b", "\u00e9", "abc\n", "\nabc", "a$", 123, None, b"abc", ["a"]]


#: Per field, values other than a client's usual ones (valid or not), and fields that do not exist.
ODD: dict[str, list[Any]] = {
    "client_order_id": ODD_IDS,
    "symbol": ODD_IDS,
    "side": ["BUY", "SELL", "buy", "", None, 1],
    "quantity": ODD_AMOUNTS,
    "order_type": ["MARKET", "LIMIT", "limit", None, 0],
    "price": ["1", "0.5", *ODD_AMOUNTS],
    "time_in_force": ["GTC", "IOC", "FOK", None, "gtc"],
    "extra": ["x", 1, None],
    "Price": ["1"],
}
MARKET = {"client_order_id": "c-1", "symbol": "BTCUSDT", "side": "BUY", "quantity": "0.001"}
LIMIT = {**MARKET, "order_type": "LIMIT", "price": "50000.5", "time_in_force": "IOC"}


@st.composite
def orders(draw: st.DrawFn, canonical: bool = False) -> dict[str, Any]:
    """One order's params: canonical (what a client sends), or that with a few fields changed,
    dropped or added, each alone or together (each rule of the models gets its turn)."""
    kind = draw(st.sampled_from([MISSING, "MARKET", "LIMIT"]))
    values: dict[str, Any] = {
        "client_order_id": draw(canonical_ids),
        "symbol": draw(canonical_ids),
        "side": draw(st.sampled_from(["BUY", "SELL"])),
        "quantity": draw(canonical_amounts),
        "order_type": kind,
        "price": draw(canonical_amounts) if kind == "LIMIT" else draw(st.sampled_from([MISSING, None])),
        "time_in_force": draw(st.sampled_from([MISSING, "GTC", "IOC"])),
    }
    if not canonical:
        for name in draw(st.lists(st.sampled_from(sorted(ODD)), min_size=1, max_size=3, unique=True)):
            values[name] = draw(st.sampled_from([MISSING, *ODD[name]]))
    order = {name: value for name, value in values.items() if value is not MISSING}
    keys = draw(st.permutations(list(order)))  # the models take any key order
    return {key: order[key] for key in keys}


def assert_same(model: type[BaseModel], params: Any) -> str | None:
    """`params_json` and the model agree on `params`: the same text, or the same errors."""
    try:
        expected: str | None = model.model_validate(params).model_dump_json(exclude_unset=True)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as caught:
            params_json(model, params)
        assert caught.value.json() == exc.json()  # every error: type, place, message, input, context
        assert caught.value.title == exc.title
        expected = None
    else:
        assert params_json(model, params) == expected
    fast = fast_params_json(model, params)
    assert fast is None or fast == expected  # the fast path vouches only for the models' text
    return fast


@pytest.mark.parametrize("base", [MARKET, LIMIT], ids=["market", "limit"])
def test_each_field_changed_alone_gets_the_models_text_or_error(base: dict[str, Any]) -> None:
    for name, values in ODD.items():
        for value in [MISSING, *values]:
            order = {k: v for k, v in {**base, name: value}.items() if v is not MISSING}
            assert_same(OrderParams, order)
            assert_same(OrdersParams, {"orders": [base, order, base]})


@settings(max_examples=400, deadline=None)
@given(orders())
def test_an_order_gets_the_models_text_or_error(order: dict[str, Any]) -> None:
    assert_same(OrderParams, order)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries({"orders": st.lists(st.one_of(orders(), orders(canonical=True)), max_size=4)}),
        st.builds(  # one changed order among valid ones
            lambda before, order, after: {"orders": [*before, order, *after]},
            st.lists(orders(canonical=True), max_size=2),
            orders(),
            st.lists(orders(canonical=True), max_size=2),
        ),
        st.fixed_dictionaries({"orders": st.lists(orders(canonical=True), min_size=1, max_size=4)}),
        st.fixed_dictionaries(
            {"orders": st.lists(orders(canonical=True), min_size=1, max_size=2), "extra": st.just(1)}
        ),
        st.sampled_from([{}, {"orders": None}, {"orders": {}}, {"orders": "x"}, [], None, "orders"]),
    )
)
def test_a_command_of_orders_gets_the_models_text_or_error(params: Any) -> None:
    assert_same(OrdersParams, params)


@settings(max_examples=300, deadline=None)
@given(st.lists(orders(canonical=True), min_size=1, max_size=5))
def test_the_orders_clients_send_take_the_fast_path(batch: list[dict[str, Any]]) -> None:
    assert assert_same(OrdersParams, {"orders": batch}) is not None
    assert assert_same(OrderParams, batch[0]) is not None


def test_the_fast_path_holds_the_models_bounds_at_their_edges() -> None:
    order = {"client_order_id": "c-1", "symbol": "BTCUSDT", "side": "BUY", "quantity": "1"}
    many = {"orders": [order] * MAX_ORDERS_PER_COMMAND}
    assert assert_same(OrdersParams, many) is not None
    assert assert_same(OrdersParams, {"orders": [*many["orders"], order]}) is None  # too many: the model says
    assert assert_same(OrdersParams, {"orders": []}) is None
    for name in ("client_order_id", "symbol"):
        assert assert_same(OrderParams, {**order, name: "a" * 64}) is not None
        assert assert_same(OrderParams, {**order, name: "a" * 65}) is None
    for text in ("999999999.99999999", "0.000001", "0.1", "1.10"):
        assert assert_same(OrderParams, {**order, "quantity": text}) is not None
    for text in ("1000000000", "0.0000001", "0.00000001", "1E+3", "01"):  # valid, but not as written
        assert assert_same(OrderParams, {**order, "quantity": text}) is None


def test_an_amount_pattern_comes_from_the_cores_bound() -> None:
    pattern = re.compile(amount_pattern(BOUNDS["quantity"]))
    assert pattern.match("999999999.99999999") and not pattern.match("1000000000")
    small = Bound("x", "fixed_point", 0, True, 12 * 10**8)  # at most 12: the fast path takes 1-9
    assert re.match(amount_pattern(small), "9.5") and not re.match(amount_pattern(small), "10")
    with pytest.raises(ValueError, match="> 0"):
        amount_pattern(Bound("x", "fixed_point", 0, False, 10**17))
