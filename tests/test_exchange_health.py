"""The exchange_api probe over the real pybit SDK against a local server that answers like
Bybit's v5 `GET /v5/market/time`: fast, slow, failing, gone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hean.config import reload_settings
from hean.core.system.health_monitor import HealthMonitor
from hean.core.system.probes import exchange_probe
from hean.exchange import BybitExchange, get_exchange, reset_exchange


class FakeBybit:
    """Answers /v5/market/time like Bybit; `delay_s` and `fail` change how."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.fail = False
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                time.sleep(owner.delay_s)
                if self.path.split("?")[0] != "/v5/market/time":
                    self.send_error(404)
                    return
                if owner.fail:
                    body = json.dumps({"retCode": 10016, "retMsg": "Server error", "result": {}, "time": 0})
                else:
                    now_ns = time.time_ns()
                    result = {"timeSecond": str(now_ns // 10**9), "timeNano": str(now_ns)}
                    body = json.dumps(
                        {"retCode": 0, "retMsg": "OK", "result": result, "time": now_ns // 10**6}
                    )
                payload = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bybit(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBybit]:
    fake = FakeBybit()
    monkeypatch.setenv("HEAN_EXCHANGE", "bybit")
    monkeypatch.setenv("HEAN_BYBIT_ENDPOINT", fake.url)
    reload_settings()
    reset_exchange()
    yield fake
    fake.close()
    monkeypatch.undo()
    reload_settings()
    reset_exchange()


def test_the_adapter_reads_bybit_server_time(bybit: FakeBybit) -> None:
    exchange = get_exchange()
    assert isinstance(exchange, BybitExchange)
    assert abs(exchange.server_time() - time.time()) < 2.0
    assert bybit.requests == 1


def test_slow_then_failing_then_gone_exchange(bybit: FakeBybit) -> None:
    monitor = HealthMonitor([exchange_probe()])

    def check() -> dict[str, Any]:
        status = monitor.check_all()
        assert status is not None
        return status["modules"]["exchange_api"]  # type: ignore[no-any-return]

    assert check()["status"] == "HEALTHY"
    bybit.delay_s = 0.1
    slow = check()
    assert slow["status"] == "DEGRADED" and slow["latency_ms"] > 50
    assert slow["reconnects"] == 1  # slower than 50 ms: a new exchange session
    bybit.delay_s = 0.21
    assert check()["status"] == "UNHEALTHY"
    bybit.delay_s = 0.0
    assert check()["status"] == "HEALTHY"
    bybit.fail = True
    time.sleep(0.6)  # past the first reconnect's backoff
    for _ in range(3):
        failing = check()
    assert failing["status"] == "UNHEALTHY" and failing["consecutive_failures"] == 3
    assert "10016" in failing["last_error"] or "Server error" in failing["last_error"]
    assert failing["reconnects"] >= 2
    bybit.close()
    gone = check()
    assert gone["status"] == "DISCONNECTED"
