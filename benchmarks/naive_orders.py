"""The naive design bench_orders compares HEAN with: what a Celery user would write first.

A Flask-SocketIO (eventlet) handler validates each order and calls ``apply_async`` once per
order; a Celery worker applies it to the same compiled engine and emits the result to the
sender through Flask-SocketIO's Redis message queue. The server is served like HEAN's web
process (``web.server.serve``), so that the comparison is of the design, not of the listener.

    REDIS_URL=... python benchmarks/naive_orders.py web PORT
    REDIS_URL=... celery -A naive_orders worker -P solo -Q naive    (PYTHONPATH=benchmarks)

The worker runs one process (``-P solo``): one engine must own the order book, in any design.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

from hean.engine import TradingEngine

REDIS_URL = os.environ["REDIS_URL"]
QUEUE = "naive"

app = Celery("naive_orders", broker=REDIS_URL)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False)

_engine: TradingEngine | None = None
_emitter: Any = None


def _ready_engine() -> TradingEngine:
    """The worker's engine: no fees, no rate limit, a BTCUSDT market, started."""
    global _engine
    if _engine is None:
        engine = TradingEngine(risk_limits={"max_orders_per_second": 0, "fee_rate": "0"})
        engine.update_market("BTCUSDT", "50000", "50001", "50000.5")
        engine.start()
        _engine = engine
    return _engine


@app.task(name="naive_orders.submit_order")
def submit_order(params: dict[str, Any], request_id: str, sid: str) -> None:
    """Apply one order and emit its result to the client that sent it."""
    global _emitter
    if _emitter is None:
        from flask_socketio import SocketIO

        _emitter = SocketIO(message_queue=REDIS_URL)
    result = _ready_engine().submit_order(
        params["client_order_id"], params["symbol"], params["side"], params["quantity"]
    )
    payload = {"request_id": request_id, "success": result.accepted, "orders": 1, "result": result.to_dict()}
    _emitter.emit("command_result", payload, to=sid)


def serve_web(port: int) -> None:
    import eventlet

    eventlet.monkey_patch()
    from flask import Flask, request
    from flask_socketio import SocketIO

    from web.server import serve

    web = Flask(__name__)
    sio = SocketIO(web, async_mode="eventlet", message_queue=REDIS_URL)
    required = ("client_order_id", "symbol", "side", "quantity")

    @sio.on("command")
    def command(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or data.get("command") not in ("submit_order", "submit_orders"):
            return {"accepted": False, "error": {"code": "unknown_command"}}
        params = data.get("params") or {}
        orders = params.get("orders", []) if data["command"] == "submit_orders" else [params]
        if not all(isinstance(o, dict) and all(k in o for k in required) for o in orders):
            return {"accepted": False, "error": {"code": "invalid_params"}}
        sid = request.sid  # type: ignore[attr-defined]  # Flask-SocketIO sets sid on the request
        for order in orders:
            submit_order.apply_async(args=[order, data.get("request_id"), sid])
        return {"accepted": True, "request_id": data.get("request_id")}

    serve(web, "127.0.0.1", port)


if __name__ == "__main__" and sys.argv[1:2] == ["web"]:
    serve_web(int(sys.argv[2]))
