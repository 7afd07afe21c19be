"""The params models of the built-in commands. Every bound comes from the C++ core's table
(hean/limits.py): the web validates a command with these before it is enqueued, so the core
never refuses what passed here for a reason the schema could have named."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from hean.limits import limit

#: Most orders one `submit_orders` command may carry.
MAX_ORDERS_PER_COMMAND = 1000


def _amount_text(value: Any) -> Any:
    """Refuse amount text that Python's Decimal reads but a person did not mean as a number:
    "0_1" (Decimal reads 1: an order typed for 0.1 would buy ten times as much), digits of other
    scripts (Arabic-Indic, full-width: Decimal reads them as 0-9), and spaces around it. Other
    text goes on to Decimal and the bounds, with their own messages; numbers are read as before."""
    if isinstance(value, str) and ("_" in value or not value.isascii() or value != value.strip()):
        raise ValueError(
            f"an amount is written with ASCII digits only, such as '0.01' or '1e-3' "
            f"(no '_', spaces or other digits): {value[:40]!r}"
        )
    return value


#: Checks an amount's text (`_amount_text`) before Decimal reads it; after the core's bounds in
#: `Annotated` (`limit`), which pydantic then keeps in the decimal schema itself (its messages
#: and the JSON schema `list_commands` shows stay as they were).
AMOUNT_TEXT = BeforeValidator(_amount_text)
Quantity = Annotated[Decimal, limit("quantity"), AMOUNT_TEXT]
Price = Annotated[Decimal, limit("price"), AMOUNT_TEXT]
ClientOrderId = Annotated[str, limit("client_order_id")]
Symbol = Annotated[str, limit("symbol")]
Side = Literal["BUY", "SELL"]
OrderType = Literal["MARKET", "LIMIT"]
TimeInForce = Literal["GTC", "IOC"]


class KillSwitchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "operator command"


class RiskAdjustParams(BaseModel):
    """Any subset of the engine's risk limits; percentages in percent (1 = 1%)."""

    model_config = ConfigDict(extra="forbid")

    min_notional: Annotated[Decimal | None, limit("min_notional"), AMOUNT_TEXT] = None
    max_notional: Annotated[Decimal | None, limit("max_notional"), AMOUNT_TEXT] = None
    max_open_orders: Annotated[int | None, limit("max_open_orders")] = None
    max_open_positions: Annotated[int | None, limit("max_open_positions")] = None
    max_leverage: Annotated[Decimal | None, limit("max_leverage"), AMOUNT_TEXT] = None
    max_trade_risk_pct: Annotated[Decimal | None, limit("max_trade_risk_pct"), AMOUNT_TEXT] = None
    stop_distance_pct: Annotated[Decimal | None, limit("stop_distance_pct"), AMOUNT_TEXT] = None
    max_daily_drawdown_pct: Annotated[Decimal | None, limit("max_daily_drawdown_pct"), AMOUNT_TEXT] = None
    kill_switch_drawdown_pct: Annotated[Decimal | None, limit("kill_switch_drawdown_pct"), AMOUNT_TEXT] = None
    max_orders_per_second: Annotated[int | None, limit("max_orders_per_second")] = None
    fee_rate: Annotated[Decimal | None, limit("fee_rate"), AMOUNT_TEXT] = None

    @model_validator(mode="after")
    def _not_empty(self) -> RiskAdjustParams:
        if not self.model_fields_set:
            raise ValueError("name at least one risk limit to change")
        return self


class OrderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    quantity: Quantity
    order_type: OrderType = "MARKET"
    price: Price | None = None
    time_in_force: TimeInForce = "GTC"

    @model_validator(mode="after")
    def _price_matches_type(self) -> OrderParams:
        if self.order_type == "LIMIT" and self.price is None:
            raise ValueError("price is required for a LIMIT order")
        if self.order_type == "MARKET" and self.price is not None:
            raise ValueError("price must be omitted for a MARKET order")
        return self


class OrdersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orders: Annotated[list[OrderParams], Field(min_length=1, max_length=MAX_ORDERS_PER_COMMAND)]


class CancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_order_id: ClientOrderId


class MarketParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    bid: Price
    ask: Price
    last: Price

    @model_validator(mode="after")
    def _ordered(self) -> MarketParams:
        if self.bid > self.ask:
            raise ValueError("bid must not exceed ask")
        return self
