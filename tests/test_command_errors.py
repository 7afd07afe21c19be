"""A rejected command's error names the field and says what is wrong in words of its own."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hean.commands.errors import validation_error
from hean.commands.params import MarketParams, OrderParams

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
