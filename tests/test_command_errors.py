"""A rejected command's error names the field and says what is wrong in words of its own."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hean.commands.errors import validation_error
from hean.commands.params import MarketParams, OrderParams, RiskAdjustParams

ORDER = {"client_order_id": "c-1", "symbol": "BTCUSDT", "side": "BUY", "quantity": "0.001"}


@pytest.mark.parametrize(
    ("model", "params", "message", "field"),
    [
        # a model's own check: its text, without pydantic's "Value error, "
        (
            OrderParams,
            {**ORDER, "order_type": "LIMIT"},
            "params: price is required for a LIMIT order",
            "params",
        ),
        (OrderParams, {**ORDER, "price": "1"}, "params: price must be omitted for a MARKET order", "params"),
        (
            MarketParams,
            {"symbol": "BTCUSDT", "bid": "2", "ask": "1", "last": "1"},
            "params: bid must not exceed ask",
            "params",
        ),
        # a field's constraint, as pydantic words it
        (
            OrderParams,
            {**ORDER, "quantity": "-1"},
            "params.quantity: Input should be greater than 0",
            "params.quantity",
        ),
        (
            OrderParams,
            {**ORDER, "side": "HOLD"},
            "params.side: Input should be 'BUY' or 'SELL'",
            "params.side",
        ),
    ],
)
def test_a_validation_error_names_the_field_in_plain_words(
    model: type[BaseModel], params: dict[str, Any], message: str, field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(params)
    error = validation_error(refused.value, "invalid_params", prefix="params.")
    assert (error.code, error.message, error.field) == ("invalid_params", message, field)


#: Text Python's Decimal reads as a number that a person did not write as one: "0_1" is 1 to
#: Decimal (an order typed for 0.1 would buy ten times as much), Arabic-Indic and full-width
#: digits are 0-9 to it, and it skips spaces around the number.
NOT_PLAIN = ["0_1", "1_000", "\u0661\u0660", "\uff11", " 1", "1 ", "1\n"]


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_an_amount_in_anything_but_ascii_digits_is_refused_by_name(text: str) -> None:
    for model, params, field in (
        (OrderParams, {**ORDER, "quantity": text}, "params.quantity"),
        (OrderParams, {**ORDER, "order_type": "LIMIT", "price": text}, "params.price"),
        (RiskAdjustParams, {"max_leverage": text}, "params.max_leverage"),
        (MarketParams, {"symbol": "BTCUSDT", "bid": text, "ask": "2", "last": "2"}, "params.bid"),
    ):
        with pytest.raises(ValidationError) as refused:
            model.model_validate(params)
        error = validation_error(refused.value, "invalid_params", prefix="params.")
        assert error.field == field and "an amount is written with ASCII digits only" in error.message, error


@pytest.mark.parametrize(
    ("text", "value"), [("0.1", "0.1"), ("1e-3", "0.001"), ("+2", "2"), (".5", "0.5"), (3, "3")]
)
def test_amounts_in_ascii_digits_are_read_as_before(text: Any, value: str) -> None:
    assert OrderParams.model_validate({**ORDER, "quantity": text}).quantity == Decimal(value)
