"""Exchange adapters. The built-in paper exchange is the default; its clock is this machine's."""

from __future__ import annotations

import time
from typing import Protocol

from hean.config import get_settings
from hean.process_wide import ProcessWide


class ExchangeUnreachable(ConnectionError):
    """The exchange could not be reached (connection refused, DNS, ...), as opposed to an
    exchange that answered with an error."""


class Exchange(Protocol):
    name: str

    def server_time(self) -> float:
        """The exchange's clock, in seconds since the epoch."""
        ...


class PaperExchange:
    """The paper market that the C++ engine fills against; it lives in this machine."""

    name = "paper"

    def server_time(self) -> float:
        return time.time()


class BybitExchange:
    """Bybit's v5 REST API over the official `pybit` SDK (public endpoints need no key)."""

    name = "bybit"

    def __init__(self, endpoint: str | None = None, testnet: bool = False, timeout: float = 2.0) -> None:
        from pybit.unified_trading import HTTP

        # one attempt per call: the pulse retries every 100 ms and must not sleep in pybit
        self._session = HTTP(testnet=testnet, timeout=timeout, max_retries=1, retry_delay=0)
        if endpoint:
            self._session.endpoint = endpoint.rstrip("/")

    def server_time(self) -> float:
        import requests

        try:
            reply = self._session.get_server_time()
        except requests.exceptions.ConnectionError as exc:
            raise ExchangeUnreachable(str(exc)) from exc
        return int(reply["result"]["timeNano"]) / 1e9


def make_exchange() -> Exchange:
    """The exchange named by HEAN_EXCHANGE (`paper` by default, or `bybit`)."""
    settings = get_settings()
    if settings.exchange == "bybit":
        return BybitExchange(settings.bybit_endpoint, settings.bybit_testnet)
    return PaperExchange()


_exchange = ProcessWide(make_exchange)


def get_exchange() -> Exchange:
    """This process's exchange session (made on first use)."""
    return _exchange.get()


def reset_exchange() -> None:
    """A new session with the exchange (the reconnect action of the health probe)."""
    _exchange.set(None)
