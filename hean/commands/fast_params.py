"""The orders' params JSON without building the models, for the web's hot path.

Why: in 100-order `submit_orders` commands the web process spent about 3 us of CPU per order
validating the params as `OrdersParams` (a pydantic model per order, a `Decimal` per amount and
a Python `model_validator` call per order) and writing them back with `model_dump_json`. Here
one pydantic-core call validates the whole command against plain-string schemas (TypedDicts:
no model instances, no Decimals, no Python validators), a short loop checks that a price comes
with LIMIT orders only, and orjson writes the result: about 0.8 us per order, measured by
``benchmarks/bench_intake.py``.

The fast path only ever vouches for params that the models accept AND whose
``model_dump_json(exclude_unset=True)`` it reproduces byte for byte: identifiers as the models
allow them, amounts as decimal strings that the model writes back unchanged (no exponent, no
leading zeros, at most 8 places, not below 1e-6, in the core's bounds). TypedDict validation
returns the keys in the schema's field order, the models' order. Anything else (numbers for
amounts, an exponent, an invalid order) returns None and takes the models, so a rejected
command gets exactly the models' error message. tests/test_fast_params.py holds this equal to
the models on valid and invalid params.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from hean import fastjson
from hean.commands.params import MAX_ORDERS_PER_COMMAND, OrderParams, OrdersParams
from hean.limits import BOUNDS, DECIMAL_PLACES, Bound, limit

#: The smallest amount whose decimal string a Decimal writes back unchanged: str(Decimal) turns
#: to an exponent below 1e-6 ("0.0000001" is written "1E-7").
_PLAIN_LEADING_ZEROS = 5


def amount_pattern(bound: Bound) -> str:
    """A regular expression for the decimal strings of `bound` (a fixed-point field with an
    exclusive lower bound of 0) that pydantic's Decimal accepts and writes back as they are."""
    if bound.kind != "fixed_point" or bound.min != 0 or not bound.min_exclusive:
        raise ValueError(f"{bound.name}: the fast path needs a fixed-point bound > 0")
    # n integer digits stay below 10**n: the most digits whose every value is within the bound
    digits = len(str(int(bound.high))) - 1
    if digits < 1:
        raise ValueError(f"{bound.name}: the fast path needs a bound of at least 10")
    places = DECIMAL_PLACES
    whole = f"[1-9][0-9]{{0,{digits - 1}}}(?:\\.[0-9]{{1,{places}}})?"
    fractions = "|".join(
        f"{'0' * zeros}[1-9][0-9]{{0,{places - zeros - 1}}}" for zeros in range(_PLAIN_LEADING_ZEROS + 1)
    )
    return f"^(?:{whole}|0\\.(?:{fractions}))$"


_STRICT = ConfigDict(extra="forbid", strict=True)
_Id = Annotated[str, limit("client_order_id")]
_Symbol = Annotated[str, limit("symbol")]
_Quantity = Annotated[str, StringConstraints(pattern=amount_pattern(BOUNDS["quantity"]))]
_Price = Annotated[str, StringConstraints(pattern=amount_pattern(BOUNDS["price"]))]


@with_config(_STRICT)
class _Order(TypedDict):
    """OrderParams' fields in its order, amounts as strings; price vs type is checked after."""

    client_order_id: _Id
    symbol: _Symbol
    side: Literal["BUY", "SELL"]
    quantity: _Quantity
    order_type: NotRequired[Literal["MARKET", "LIMIT"]]
    price: NotRequired[_Price | None]
    time_in_force: NotRequired[Literal["GTC", "IOC"]]


@with_config(_STRICT)
class _Orders(TypedDict):
    orders: Annotated[list[_Order], Field(min_length=1, max_length=MAX_ORDERS_PER_COMMAND)]


_ORDER = TypeAdapter(_Order)
_ORDERS = TypeAdapter(_Orders)


def _priced_right(orders: list[_Order]) -> bool:
    """OrderParams._price_matches_type for each order: a price with LIMIT orders only. An order
    of 4 fields has the required ones alone: a MARKET order without a price."""
    for order in orders:  # a loop: cheaper than all() over a generator
        if len(order) > 4 and (order.get("price") is None) is (order.get("order_type") == "LIMIT"):
            return False
    return True


def _order_json(params: Any) -> str | None:
    try:
        order = _ORDER.validate_python(params)
    except ValidationError:
        return None
    return fastjson.dumps(order) if _priced_right([order]) else None


def _orders_json(params: Any) -> str | None:
    try:
        checked = _ORDERS.validate_python(params)
    except ValidationError:
        return None
    return fastjson.dumps(checked) if _priced_right(checked["orders"]) else None


_FAST = {OrderParams: _order_json, OrdersParams: _orders_json}


def fast_params_json(model: type[BaseModel], params: Any) -> str | None:
    """``model.model_validate(params).model_dump_json(exclude_unset=True)`` when the fast path
    vouches for `params` (valid, and written back as given); None: validate with `model`."""
    fast = _FAST.get(model)
    return fast(params) if fast is not None else None


def params_json(model: type[BaseModel], params: Any) -> str:
    """``model.model_validate(params).model_dump_json(exclude_unset=True)``: the same text, or
    the same ValidationError, by the fast path where it can."""
    encoded = fast_params_json(model, params)
    if encoded is None:
        encoded = model.model_validate(params).model_dump_json(exclude_unset=True)
    return encoded
