"""Exchange adapters. The built-in paper exchange is the default; its clock is this machine's."""

from __future__ import annotations

import threading
import time
from typing import Protocol


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


_exchange: Exchange | None = None
_lock = threading.Lock()


def get_exchange() -> Exchange:
    global _exchange
    with _lock:
        if _exchange is None:
            _exchange = PaperExchange()
        return _exchange


def reset_exchange() -> None:
    """A new session with the exchange (the reconnect action of the health probe)."""
    global _exchange
    with _lock:
        _exchange = None
