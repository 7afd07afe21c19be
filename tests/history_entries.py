"""Stream entries of the history (`hean:history`) as the web process and the engine worker write
them, for `submit_orders` commands whose orders all filled, at the times asked: for the tests of
the history's retention and benchmarks/bench_retention.py."""

from __future__ import annotations

import json
import uuid

Entries = list[tuple[str, dict[str, str]]]


class History:
    """Stream entries of `submit_orders` commands, every order filled, at the times asked."""

    def __init__(self) -> None:
        self.entries: Entries = []
        self.last_ms = 0
        self.count = 0

    def _entry(self, at: float, field: str, line: str) -> None:
        ms = max(int(at * 1000), self.last_ms + 1)
        self.last_ms = ms
        self.entries.append((f"{ms}-0", {field: line}))

    def command(self, at: float, orders_per_command: int = 5, answered: bool = True) -> str:
        """One command received at `at`, answered (and its orders executed) 2 ms later."""
        self.count += 1
        request_id = f"r-{self.count}-{uuid.uuid4().hex[:6]}"
        asked = [
            {"client_order_id": f"{request_id}-{seq}", "symbol": "BTCUSDT", "side": "BUY", "quantity": "0.1"}
            for seq in range(orders_per_command)
        ]
        envelope = {
            "request_id": request_id,
            "command": "submit_orders",
            "params": {"orders": asked},
            "received_at_ms": int(at * 1000),
        }
        self._entry(at, "c", json.dumps(envelope))
        if answered:
            outcomes = [
                {"client_order_id": o["client_order_id"], "order_id": self.count * 1000 + seq,
                 "duplicate": False, "status": "FILLED", "reject_reason": None,
                 "filled_quantity": "0.10000000", "fill_price": "50000.00000000", "fee": "0.00500000"}
                for seq, o in enumerate(asked)
            ]  # fmt: skip
            result = {"request_id": request_id, "command": "submit_orders", "success": True,
                      "result": {"results": outcomes}, "error": None}  # fmt: skip
            self._entry(at + 0.002, "r", json.dumps(result))
        return request_id

    def take(self) -> Entries:
        taken, self.entries = self.entries, []
        return taken
