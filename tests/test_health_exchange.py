"""The exchange_api probe over the real pybit SDK against a local server that answers like
Bybit's v5 `GET /v5/market/time`: fast, slow, failing, gone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hean.config import reload_settings
from hean.core.system.health_monitor import HealthMonitor
from hean.core.system.probes import exchange_probe
from hean.exchange import BybitExchange, get_exchange, reset_exchange
from support import wait_for


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


def _names_exchange_error(error: str | None) -> bool:
    """The fake's failure as the probe reports it: Bybit's retCode 10016, "Server error"."""
    return "10016" in (error or "") or "Server error" in (error or "")


def test_slow_then_failing_then_gone_exchange(bybit: FakeBybit) -> None:
    """DEGRADED when slow (and a new session), UNHEALTHY when slower, UNHEALTHY with the
    exchange's error when it fails (reconnected again after 3 failures), DISCONNECTED when
    gone, and HEALTHY again in between. Pulses run back to back, as the pulse task would."""
    monitor = HealthMonitor([exchange_probe()])

    def until(condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def seen() -> bool:
            nonlocal found
            status = monitor.check_all()
            assert status is not None
            found = status["modules"]["exchange_api"]
            return condition(found)

        wait_for(seen, 20, what, interval=0.02)
        return found

    try:
        until(lambda m: m["status"] == "HEALTHY", "a fast exchange HEALTHY")
        bybit.delay_s = 0.1
        slow = until(lambda m: m["status"] == "DEGRADED" and not m["pending"], "a slow exchange DEGRADED")
        assert 50 < slow["latency_ms"] <= 200
        assert slow["reconnects"] >= 1  # slower than 50 ms: a new exchange session
        bybit.delay_s = 0.3
        slower = until(lambda m: m["status"] == "UNHEALTHY", "a slower exchange UNHEALTHY")
        assert slower["latency_ms"] > 200
        until(lambda m: m["reconnects"] > slow["reconnects"], "another reconnect")
        bybit.delay_s = 0.0
        until(lambda m: m["status"] == "HEALTHY", "HEALTHY again")
        bybit.fail = True
        before = until(lambda m: m["status"] == "UNHEALTHY", "a failing exchange UNHEALTHY")["reconnects"]
        # a check still waiting counts as a failure too ("no answer after ... ms": a reconnect on a
        # busy machine), so the exchange's own error is looked for while they keep failing
        failing = until(
            lambda m: m["consecutive_failures"] >= 3 and _names_exchange_error(m["last_error"]),
            "three failures in a row, the exchange's error named",
        )
        assert failing["status"] in ("UNHEALTHY", "DISCONNECTED")
        until(lambda m: m["reconnects"] > before, "a reconnect after three failures")
        bybit.fail = False
        until(lambda m: m["status"] == "HEALTHY" and m["consecutive_failures"] == 0, "HEALTHY again")
        bybit.close()
        gone = until(lambda m: m["status"] == "DISCONNECTED", "a gone exchange DISCONNECTED")
        assert "bybit" in gone["last_error"]
    finally:
        monitor.close()
