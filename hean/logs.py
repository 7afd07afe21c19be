"""Structured logging: one event per line, key=value, never secrets."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure_logging(level: str = "info") -> None:
    """Configure the root logger once for a HEAN process (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_hean", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._hean = True  # type: ignore[attr-defined]  # our mark, so it is installed once
    root.addHandler(handler)
    root.setLevel(level.upper())


class FailureLog:
    """The lines of a failure that recurs (every command refused while a database or Redis is
    away, every accept while descriptors run out): the first at once, then at most one every
    `every_s`, each with `failures=` (how many so far), and one `recovered` line once it works
    again. One line per failure flooded the log: a 15 s PostgreSQL restart under a client
    resending 200 orders a second wrote 6,500 lines."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self.failures = 0
        self._logged_at = float("-inf")

    def failed(self, message: str, *args: object, level: int = logging.ERROR) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._logged_at >= self.every_s:
            self._logged_at = now
            self.logger.log(level, message + " failures=%d", *args, self.failures)

    def recovered(self, message: str, *args: object) -> None:
        """It worked: says so once (WARNING) if it had failed, and starts over."""
        if self.failures:
            self.logger.warning(message + " failures=%d", *args, self.failures)
            self.failures, self._logged_at = 0, float("-inf")
