"""Pure-Python reference model of the C++ order engine (readable, slow, exact).

The model mirrors the integer rules documented in cpp_ext/engine.hpp (units of 1e-8,
floor notionals, ceil fees, exact cost basis with floor removal on partial closes). The
property tests in tests/test_engine_properties.py drive it and the compiled core with the same
random sequences and require identical results; benchmarks/bench_engine.py uses it as
the baseline; tests/test_engine_model.py tests the model itself. The order-rate throttle is
not modelled (tests run with it off).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

SCALE = 100_000_000
HUNDRED_PCT = 100 * SCALE

# Core codes (hean._core enums).
BUY, SELL = 0, 1
MARKET, LIMIT = 0, 1
GTC, IOC = 0, 1
FILLED, RESTING, EXPIRED, REJECTED = 0, 1, 2, 3
(
    NONE,
    ENGINE_STOPPED,
    ENGINE_HALTED,
    THROTTLED,
    NO_MARKET_DATA,
    MIN_NOTIONAL,
    MAX_NOTIONAL,
    MAX_OPEN_ORDERS,
    MAX_OPEN_POSITIONS,
    DAILY_DRAWDOWN,
    MAX_TRADE_RISK,
    MAX_LEVERAGE,
) = range(12)

DEFAULT_LIMITS: dict[str, int] = {
    "min_notional": 5 * SCALE,
    "max_notional": 50_000 * SCALE,
    "max_open_orders": 20,
    "max_open_positions": 10,
    "max_leverage": 3 * SCALE,
    "max_trade_risk_pct": 1 * SCALE,
    "stop_distance_pct": 2 * SCALE,
    "max_daily_drawdown_pct": 15 * SCALE,
    "kill_switch_drawdown_pct": 30 * SCALE,
    "max_orders_per_second": 0,
    "fee_rate": 100_000,
}

# (order_id, status, reason, filled_qty, fill_price, fee, duplicate)
Outcome = tuple[int, int, int, int, int, int, bool]
# (order_id, client_order_id, symbol, side, quantity, price, fee)
FillTuple = tuple[int, str, str, int, int, int, int]


def notional(price: int, qty: int) -> int:
    return price * qty // SCALE


def fee_for(price: int, qty: int, rate: int) -> int:
    return -(-(price * qty * rate) // (SCALE * SCALE))


@dataclass
class RefOrder:
    order_id: int
    seq: int
    client_id: str
    side: int
    price: int
    qty: int
    first: Outcome


@dataclass
class RefSymbol:
    name: str
    bid: int = 0
    ask: int = 0
    last: int = 0
    qty: int = 0
    cost: int = 0
    realized: int = 0
    fees: int = 0
    resting: list[RefOrder] = field(default_factory=list)

    def unrealized(self) -> int:
        if self.qty == 0 or self.last == 0:
            return 0
        mark = notional(self.last, abs(self.qty))
        return mark - self.cost if self.qty > 0 else self.cost - mark

    def gross(self) -> int:
        if self.qty == 0:
            return 0
        return notional(self.last, abs(self.qty)) if self.last > 0 else self.cost


class ReferenceEngine:
    """The order engine's rules in plain Python integers (readable, slow, exact)."""

    def __init__(
        self,
        starting_equity: int = 10_000 * SCALE,
        limits: dict[str, int] | None = None,
        idempotency_capacity: int = 100_000,
    ) -> None:
        self.starting_equity = starting_equity
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.capacity = idempotency_capacity
        self.state = "STOPPED"
        self.symbols: dict[str, RefSymbol] = {}
        self.seen: dict[str, Outcome] = {}
        self.seen_order: deque[str] = deque()
        self.open: dict[str, RefOrder] = {}
        self.next_order_id = 1
        self.next_seq = 1
        self.peak_equity = starting_equity
        self.day_start_equity = starting_equity

    # -- account --

    def equity(self) -> int:
        s = self.symbols.values()
        return (
            self.starting_equity
            + sum(x.realized for x in s)
            - sum(x.fees for x in s)
            + sum(x.unrealized() for x in s)
        )

    def open_positions(self) -> int:
        return sum(1 for x in self.symbols.values() if x.qty != 0)

    def open_order_notional(self) -> int:
        return sum(notional(o.price, o.qty) for o in self.open.values())

    def _halt(self, reason: str) -> None:
        self.state = "HALTED"
        self.halt_reason = reason
        for s in self.symbols.values():
            s.resting.clear()
        self.open.clear()

    def _check_equity(self) -> None:
        eq = self.equity()
        self.peak_equity = max(self.peak_equity, eq)
        if self.state == "HALTED" or self.peak_equity <= 0:
            return
        dd = self.peak_equity - eq
        if dd > 0 and dd * HUNDRED_PCT >= self.limits["kill_switch_drawdown_pct"] * self.peak_equity:
            self._halt("drawdown")

    # -- commands --

    def start(self) -> bool:
        if self.state != "STOPPED":
            return False
        self.state = "RUNNING"
        return True

    def stop(self) -> bool:
        if self.state != "RUNNING":
            return False
        self.state = "STOPPED"
        return True

    def kill_switch(self) -> bool:
        if self.state == "HALTED":
            return False
        self._halt("command")
        return True

    def reset_kill_switch(self) -> bool:
        if self.state != "HALTED":
            return False
        self.state = "STOPPED"
        self.peak_equity = self.equity()
        return True

    # -- fills --

    def _apply_fill(self, s: RefSymbol, side: int, qty: int, price: int) -> int:
        fee = fee_for(price, qty, self.limits["fee_rate"])
        buy = side == BUY
        if s.qty == 0 or (s.qty > 0) == buy:
            s.cost += notional(price, qty)
            s.qty += qty if buy else -qty
        else:
            held = abs(s.qty)
            close = min(qty, held)
            removed = s.cost if close == held else s.cost * close // held
            proceeds = notional(price, close)
            s.realized += proceeds - removed if s.qty > 0 else removed - proceeds
            s.cost -= removed
            s.qty += close if buy else -close
            rest = qty - close
            if rest > 0:
                s.cost = notional(price, rest)
                s.qty = rest if buy else -rest
        s.fees += fee
        return fee

    def _remember(self, cid: str, outcome: Outcome) -> None:
        if len(self.seen_order) == self.capacity:
            del self.seen[self.seen_order.popleft()]
        self.seen_order.append(cid)
        self.seen[cid] = outcome

    def submit(self, cid: str, symbol: str, side: int, kind: int, qty: int, price: int, tif: int) -> Outcome:
        if cid in self.seen:
            return (*self.seen[cid][:6], True)
        if cid in self.open:
            return (*self.open[cid].first[:6], True)

        def reject(reason: int) -> Outcome:
            out = (0, REJECTED, reason, 0, 0, 0, False)
            self._remember(cid, out)
            return out

        if self.state == "STOPPED":
            return reject(ENGINE_STOPPED)
        if self.state == "HALTED":
            return reject(ENGINE_HALTED)
        lim = self.limits
        s = self.symbols.get(symbol)
        buy = side == BUY
        crosses = False
        exec_price = 0
        if kind == MARKET:
            exec_price = 0 if s is None else (s.ask if buy else s.bid)
            if exec_price == 0:
                return reject(NO_MARKET_DATA)
            crosses = True
            ref = exec_price
        else:
            ref = price
            if s is not None:
                exec_price = s.ask if buy else s.bid
                crosses = exec_price > 0 and (price >= exec_price if buy else price <= exec_price)
        order_notional = notional(ref, qty)
        if order_notional < lim["min_notional"]:
            return reject(MIN_NOTIONAL)
        if order_notional > lim["max_notional"]:
            return reject(MAX_NOTIONAL)
        rests = not crosses and kind == LIMIT and tif == GTC
        if rests and len(self.open) >= lim["max_open_orders"]:
            return reject(MAX_OPEN_ORDERS)
        held = 0 if s is None else s.qty
        if held == 0 and self.open_positions() >= lim["max_open_positions"]:
            return reject(MAX_OPEN_POSITIONS)
        signed = qty if buy else -qty
        opening = qty if held == 0 or (held > 0) == buy else max(0, qty - abs(held))
        if opening > 0:
            eq = self.equity()
            day_loss = self.day_start_equity - eq
            if (
                day_loss > 0
                and day_loss * HUNDRED_PCT >= lim["max_daily_drawdown_pct"] * self.day_start_equity
            ):
                return reject(DAILY_DRAWDOWN)
            if eq <= 0 or notional(ref, opening) * lim["stop_distance_pct"] > lim["max_trade_risk_pct"] * eq:
                return reject(MAX_TRADE_RISK)
            gross_other = sum(x.gross() for x in self.symbols.values() if x is not s)
            projected = gross_other + notional(ref, abs(held + signed)) + self.open_order_notional()
            if projected * SCALE > lim["max_leverage"] * eq:
                return reject(MAX_LEVERAGE)

        if s is None:
            s = self.symbols[symbol] = RefSymbol(symbol)
        order_id = self.next_order_id
        self.next_order_id += 1
        if crosses:
            fee = self._apply_fill(s, side, qty, exec_price)
            out = (order_id, FILLED, NONE, qty, exec_price, fee, False)
            self._remember(cid, out)
            self._check_equity()
        elif rests:
            out = (order_id, RESTING, NONE, 0, 0, 0, False)
            order = RefOrder(order_id, self.next_seq, cid, side, price, qty, out)
            self.next_seq += 1
            s.resting.append(order)
            self.open[cid] = order
            self._remember(cid, out)
        else:
            out = (order_id, EXPIRED, NONE, 0, 0, 0, False)
            self._remember(cid, out)
        return out

    def cancel(self, cid: str) -> bool:
        order = self.open.pop(cid, None)
        if order is None:
            return False
        for s in self.symbols.values():
            if order in s.resting:
                s.resting.remove(order)
        return True

    def update_market(self, symbol: str, bid: int, ask: int, last: int) -> list[FillTuple]:
        s = self.symbols.get(symbol)
        if s is None:
            s = self.symbols[symbol] = RefSymbol(symbol)
        s.bid, s.ask, s.last = bid, ask, last
        self._check_equity()
        fills: list[FillTuple] = []
        buys = sorted(
            (o for o in s.resting if o.side == BUY and o.price >= ask), key=lambda o: (-o.price, o.seq)
        )
        sells = sorted(
            (o for o in s.resting if o.side == SELL and o.price <= bid), key=lambda o: (o.price, o.seq)
        )
        for order in [*buys, *sells]:
            if self.state == "HALTED":
                break
            s.resting.remove(order)
            del self.open[order.client_id]
            fee = self._apply_fill(s, order.side, order.qty, order.price)
            fills.append((order.order_id, order.client_id, symbol, order.side, order.qty, order.price, fee))
            self._check_equity()
        return fills

    def open_orders(self) -> list[tuple[int, str, str, int, int, int]]:
        """Resting orders in the core's listing order (symbol, buys best-first, sells)."""
        out = []
        for s in self.symbols.values():
            buys = sorted((o for o in s.resting if o.side == BUY), key=lambda o: (-o.price, o.seq))
            sells = sorted((o for o in s.resting if o.side == SELL), key=lambda o: (o.price, o.seq))
            out += [(o.order_id, o.client_id, s.name, o.side, o.price, o.qty) for o in buys + sells]
        return out

    def positions(self) -> list[tuple[str, int, int, int, int, int]]:
        """(symbol, qty, cost, realized, unrealized, fees) like the core lists them."""
        return [
            (s.name, s.qty, s.cost, s.realized, s.unrealized(), s.fees)
            for s in self.symbols.values()
            if s.qty != 0 or s.realized != 0 or s.fees != 0
        ]
